"""Serve section of the bench: `/knn-service` against the same query sent as SQL straight to ClickHouse.

On an indexed table (1,000,000 synthetic rows by default, a ClickHouse 26.9 server from chdb-core on loopback),
`embedding_input` queries of rows sampled from the table, k = 40 (num_images), num_result_ids 40 and 3000 (what
clip-front asks; the index serves at most `max_limit_for_vector_search_queries`, so both paths send LIMIT 1000). The
raw arm POSTs exactly the SQL and settings the service sends first for each body (built by the service's own
Searcher): the index query. By default the service then reads the hits' stored vectors by id for their exact
similarity (a second, smaller query): that is inside our overhead; `--index-distances` skips it. Load comes from
Debian's `wrk` (a Lua script cycles through the bodies), at 1 and 8 connections, arms interleaved round by round;
the table prints the median of the rounds. The figure is our overhead: p50(serve) − p50(raw) at c=1, and QPS(serve)
/ QPS(raw) at c=8.

Run alone: python bench/serve_bench.py --work DIR [--rows 1000000] [--seconds 8] [--rounds 3] [--source SYNTH_DIR]
(DIR keeps the server's data and the shards: a second run reuses the loaded, indexed table.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from chdb_server import start_ch26  # noqa: E402
from serve_run import serving  # noqa: E402

from ingest.core.config import QueryConfig, TargetConfig  # noqa: E402
from ingest.core.ids import TableRef  # noqa: E402
from ingest.core.target import parse_target  # noqa: E402
from ingest.serve.engine import Searcher, ServeOptions  # noqa: E402
from ingest.serve.protocol import parse_knn  # noqa: E402
from ingest.sinks import open_sink  # noqa: E402

PY = sys.executable
DB = "bench"
SHARD_ROWS = 100_000
QUERIES = 200
WRK_LUA = """
local bodies = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  i = math.random(#bodies)
end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests":%d,"duration_us":%d,"p50":%d,"p95":%d,"p99":%d,"errors":%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), e.status + e.connect + e.read + e.write + e.timeout))
end
"""


def sh(*cmd: str) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return res.stdout


def ch(url: str, sql: str) -> str:
    req = urllib.request.Request(f"{url}/?user=default", data=sql.encode())
    with urllib.request.urlopen(req, timeout=600) as resp:
        return str(resp.read().decode())


def prepare(work: Path, rows: int, url: str, source: Path | None) -> None:
    """`bench.laion` loaded and image_index built on the server (reused when already there).

    `source`: a synth directory that exists already (its shards 0.. hold `rows` rows), loaded instead of a new one."""
    have = ch(url, f"SELECT count() FROM system.tables WHERE database = '{DB}' AND name = 'laion'").strip()
    n = int(ch(url, f"SELECT count() FROM {DB}.laion").strip()) if have == "1" else 0
    target = ["--target", url, "--database", DB, "--user", "default"]
    if n != rows:
        if source is not None:
            src, shards = source, len(list((source / "img_emb").glob("img_emb_*.npy")))
        else:
            shards, src = max(1, rows // SHARD_ROWS), work / "src"
            sh(PY, "-m", "ingest", "synth", "-o", str(src), "--shards", f"0-{shards - 1}", "--rows", str(SHARD_ROWS))
        sh(PY, "-m", "ingest", "run", "--source", str(src), "--shards", f"0-{shards - 1}", *target, "--no-progress")
    idx = ch(url, f"SELECT count() FROM system.data_skipping_indices WHERE database = '{DB}' AND table = 'laion'")
    if idx.strip() == "0":
        sh(PY, "-m", "ingest", "index", *target, "--column", "image_embedding", "--m", "16", "--ef-construction", "64")


def bodies(url: str, work: Path, rows: int, num_result_ids: int, rescore: bool) -> tuple[list[str], list[str], str]:
    """The service's bodies, the raw SQL of each, and the raw path (the settings are the same for every query)."""
    cached = work / "queries.json"
    if not cached.exists():  # a scan of the vectors: once per work dir
        sample = ch(
            url,
            f"SELECT image_embedding FROM {DB}.laion WHERE cityHash64(id) % {max(1, rows // (QUERIES * 2))} = 0 "
            f"LIMIT {QUERIES} FORMAT JSONCompactEachRow",
        )
        cached.write_text(json.dumps([json.loads(line)[0] for line in sample.splitlines()]))
    vectors = json.loads(cached.read_text())
    docs = [
        {"embedding_input": v, "modality": "image", "num_images": 40, "num_result_ids": num_result_ids} for v in vectors
    ]

    async def plan() -> tuple[list[str], dict[str, str | int]]:
        spec = parse_target(url)
        q = QueryConfig(replace(TargetConfig(spec), database=DB), TableRef(DB, "laion"))
        sink = open_sink(q.target)
        await sink.connect()
        try:
            searcher = Searcher(sink, q, ServeOptions(index_name="laion", rescore=rescore))
            await searcher.refresh()
            out, settings = [], {}
            for doc in docs:
                req = parse_knn(doc, searcher.facts.max_limit)
                literal = searcher.check_vector(req.column, req.vector or ())
                assert literal is not None
                sql, settings = searcher.first_query(req, req.column, literal)
                out.append(sql + " FORMAT JSONEachRow")
            return out, settings
        finally:
            await sink.close()

    raw, settings = asyncio.run(plan())
    params = {"user": "default", "database": DB, "output_format_json_quote_64bit_integers": 0, **settings}
    return [json.dumps(d) for d in docs], raw, "/?" + urllib.parse.urlencode(params)


def wrk(url: str, lua: Path, lines: Path, conns: int, seconds: int) -> dict[str, float]:
    threads = min(conns, 2)
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s", "--timeout", "30s", "-s", str(lua)]
    out = subprocess.run([*cmd, url, "--", str(lines)], capture_output=True, text=True, check=True).stdout
    doc = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    return {
        "errors": doc["errors"],
        "p50": doc["p50"] / 1000,
        "p95": doc["p95"] / 1000,
        "p99": doc["p99"] / 1000,
        "qps": doc["requests"] / (doc["duration_us"] / 1e6),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="keeps server data and shards between runs")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--source", type=Path, default=None, help="an existing synth directory to load (not generated)")
    ap.add_argument(
        "--index-distances", action="store_true", help="both arms without rescoring (serve --index-distances)"
    )
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    work = args.work or Path(tempfile.mkdtemp(prefix="serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    server = start_ch26(work / "ch", password="")
    try:
        run(work, args, server.http_url)
    finally:
        server.stop()


def run(work: Path, args: argparse.Namespace, url: str) -> None:
    prepare(work, args.rows, url, args.source)
    lua = work / "post.lua"
    lua.write_text(WRK_LUA)
    results: dict[tuple[int, int, str], list[dict[str, float]]] = {}
    extra = ["--index-distances"] if args.index_distances else []
    with serving(["--target", url, "--database", DB, "--user", "default", *extra], work / "serve.log") as sv:
        for n in (40, 3000):
            docs, raw, raw_path = bodies(url, work, args.rows, n, not args.index_distances)
            (work / f"serve-{n}.txt").write_text("\n".join(docs) + "\n")
            (work / f"raw-{n}.txt").write_text("\n".join(raw) + "\n")
            for conns in (1, 8):
                for _ in range(args.rounds):  # interleaved: both arms see the same machine weather
                    for arm, target, lines in (
                        ("raw SQL", url + raw_path, work / f"raw-{n}.txt"),
                        ("/knn-service", sv.url + "/knn-service", work / f"serve-{n}.txt"),
                    ):
                        results.setdefault((n, conns, arm), []).append(wrk(target, lua, lines, conns, args.seconds))
    how = "index distances" if args.index_distances else "exact similarity of the hits by id (2nd query)"
    print(
        f"serve bench: {args.rows:,} rows, HNSW M=16 ef_c=64 bf16, {how}, k=40, {QUERIES} query rows, "
        f"wrk {args.seconds} s × {args.rounds} rounds (median), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print("| num_result_ids | conc | path | p50 ms | p95 ms | p99 ms | QPS | errors |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    med: dict[tuple[int, int, str], dict[str, float]] = {}
    for key, runs in results.items():
        med[key] = {m: statistics.median(r[m] for r in runs) for m in ("p50", "p95", "p99", "qps")}
        n, conns, arm = key
        r, errors = med[key], sum(int(x["errors"]) for x in runs)
        print(
            f"| {n} | {conns} | {arm} | {r['p50']:.2f} | {r['p95']:.2f} | {r['p99']:.2f} | {r['qps']:.1f} | {errors} |"
        )
    for n in (40, 3000):
        over = med[(n, 1, "/knn-service")]["p50"] - med[(n, 1, "raw SQL")]["p50"]
        ratio = med[(n, 8, "/knn-service")]["qps"] / max(med[(n, 8, "raw SQL")]["qps"], 1e-9)
        print(
            f"num_result_ids {n}: p50 overhead at c=1 {over:+.2f} ms (goal <= 5); "
            f"QPS at c=8 {ratio:.2f}x raw (goal >= 0.8)"
        )


if __name__ == "__main__":
    main()
