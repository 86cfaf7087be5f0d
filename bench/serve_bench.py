"""Serve section of the bench: `/knn-service` against the same query sent as SQL straight to ClickHouse.

On an indexed table (1,000,000 synthetic rows by default, a ClickHouse 26.9 server from chdb-core on loopback),
`embedding_input` queries of rows sampled from the table, k = 40 (num_images), num_result_ids 40 and 3000 (what
clip-front asks; the index serves at most `max_limit_for_vector_search_queries`, so every path sends LIMIT 1000).
Three arms, so that nothing is hidden: "raw index query" POSTs the index query alone (ids, metadata, the index's
own distances); "raw SQL sent" POSTs exactly the one SQL and settings the service sends for each body (built by the
service's own Searcher: by default the index query as an IN subquery, the hits read by primary key for their exact
similarity); "/knn-service" is the service. With `--index-distances` the service sends the index query alone, so
the middle arm is the first. Load comes from Debian's `wrk` (a Lua script cycles through the bodies), at 1 and 8
connections, arms interleaved round by round; the table prints the median of the rounds. Our overhead is measured
against the SQL the service sends: p50(service) − p50(raw SQL sent) at c=1, and QPS(service) / QPS(raw SQL sent)
at c=8; the cost of exactness is the middle arm against the first.

Run alone: python bench/serve_bench.py --work DIR [--rows 1000000] [--seconds 8] [--rounds 3] [--source SYNTH_DIR]
(DIR keeps the server's data and the shards: a second run reuses the loaded, indexed table; `--prepare-only`
loads and indexes without timing anything, `--url` uses a server already running on that table instead of DIR's.)
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
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from chdb_server import start_ch26  # noqa: E402
from harness import LAION_INGEST  # noqa: E402 - this checkout's program (bench/harness.py)
from serve_run import serving  # noqa: E402

from ingest.core.config import QueryConfig, TargetConfig  # noqa: E402
from ingest.core.ids import TableRef  # noqa: E402
from ingest.core.target import parse_target  # noqa: E402
from ingest.serve.engine import Searcher, ServeOptions  # noqa: E402
from ingest.serve.protocol import parse_knn  # noqa: E402
from ingest.sinks import open_sink  # noqa: E402

DB = "bench"
INDEX_ARM = "raw index query"
SENT_ARM = "raw SQL sent"
SERVICE_ARM = "/knn-service"
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
            sh(*LAION_INGEST, "synth", "-o", str(src), "--shards", f"0-{shards - 1}", "--rows", str(SHARD_ROWS))
        sh(*LAION_INGEST, "run", "--source", str(src), "--shards", f"0-{shards - 1}", *target, "--no-progress")
    idx = ch(url, f"SELECT count() FROM system.data_skipping_indices WHERE database = '{DB}' AND table = 'laion'")
    if idx.strip() == "0":
        sh(*LAION_INGEST, "index", *target, "--column", "image_embedding", "--m", "16", "--ef-construction", "64")


def bodies(
    url: str, work: Path, rows: int, num_result_ids: int, rescore: bool
) -> tuple[list[str], dict[str, list[str]], str]:
    """The service's bodies, the raw SQL of each per raw arm, and the raw path (the same settings for every query)."""
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

    async def plan() -> tuple[dict[str, list[str]], dict[str, str | int]]:
        spec = parse_target(url)
        q = QueryConfig(replace(TargetConfig(spec), database=DB), TableRef(DB, "laion"))
        sink = open_sink(q.target)
        await sink.connect()
        try:
            searcher = Searcher(sink, q, ServeOptions(index_name="laion", rescore=rescore))
            await searcher.refresh()
            out: dict[str, list[str]] = {INDEX_ARM: [], SENT_ARM: []}
            settings: dict[str, str | int] = {}
            for doc in docs:
                req = parse_knn(doc, searcher.facts.max_limit)
                literal = searcher.check_vector(req.column, req.vector or ())
                assert literal is not None
                index_sql, _ = searcher.index_query(req, req.column, literal)
                sql, settings = searcher.first_query(req, req.column, literal)
                out[INDEX_ARM].append(index_sql + " FORMAT JSONEachRow")
                out[SENT_ARM].append(sql + " FORMAT JSONEachRow")
            if out[SENT_ARM] == out[INDEX_ARM]:
                del out[SENT_ARM]  # the service sends the index query alone: one raw arm says it all
            return out, settings
        finally:
            await sink.close()

    raw, settings = asyncio.run(plan())
    params = {"user": "default", "database": DB, "output_format_json_quote_64bit_integers": 0, **settings}
    return [json.dumps(d) for d in docs], raw, "/?" + urllib.parse.urlencode(params)


def drain(url: str, timeout: float = 300.0) -> None:
    """Wait until no search of an earlier window still runs on the server: each window starts on a quiet server."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = ch(
            url, "SELECT count() FROM system.processes WHERE query LIKE '%cosineDistance%' AND query_id != queryID()"
        )
        if busy.strip() == "0":
            return
        time.sleep(0.5)


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
    ap.add_argument(
        "--seconds-large",
        type=int,
        default=None,
        help="window for num_result_ids 3000, whose queries take ~1 s (default 3 × --seconds)",
    )
    ap.add_argument("--source", type=Path, default=None, help="an existing synth directory to load (not generated)")
    ap.add_argument("--url", default=None, help="a server already running with the table (else DIR's is started)")
    ap.add_argument("--prepare-only", action="store_true", help="load and index the table, time nothing")
    ap.add_argument(
        "--index-distances", action="store_true", help="the service answers the index's distances (one query)"
    )
    args = ap.parse_args()
    args.seconds_large = args.seconds_large or 3 * args.seconds
    if shutil.which("wrk") is None and not args.prepare_only:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    work = args.work or Path(tempfile.mkdtemp(prefix="serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.url:
        run(work, args, args.url)
        return
    server = start_ch26(work / "ch", password="")
    try:
        run(work, args, server.http_url)
    finally:
        server.stop()


def table_facts(url: str) -> str:
    """What the bench ran on: the index as built and the table's rows per granule (its layout)."""
    index = ch(
        url,
        f"SELECT type_full FROM system.data_skipping_indices WHERE database = '{DB}' AND table = 'laion' "
        "AND name = 'image_index' FORMAT TSV",
    ).strip()
    granule = ch(
        url,
        f"SELECT round(sum(rows) / sum(marks)) FROM system.parts WHERE database = '{DB}' AND table = 'laion' "
        "AND active FORMAT TSV",
    ).strip()
    return f"{index or 'no index'}, {granule} rows/granule"


def run(work: Path, args: argparse.Namespace, url: str) -> None:
    prepare(work, args.rows, url, args.source)
    if args.prepare_only:
        print(f"prepared {DB}.laion: {table_facts(url)}")
        return
    lua = work / "post.lua"
    lua.write_text(WRK_LUA)
    results: dict[tuple[int, int, str], list[dict[str, float]]] = {}
    extra = ["--index-distances"] if args.index_distances else []
    with serving(["--target", url, "--database", DB, "--user", "default", *extra], work / "serve.log") as sv:
        for n in (40, 3000):
            docs, raw, raw_path = bodies(url, work, args.rows, n, not args.index_distances)
            (work / f"serve-{n}.txt").write_text("\n".join(docs) + "\n")
            arms = [(SERVICE_ARM, sv.url + "/knn-service", work / f"serve-{n}.txt")]
            for arm, sqls in raw.items():
                lines = work / f"raw-{n}-{arm.split()[-1]}.txt"
                lines.write_text("\n".join(sqls) + "\n")
                arms.insert(-1, (arm, url + raw_path, lines))
            seconds = args.seconds if n == 40 else args.seconds_large
            for conns in (1, 8):
                for r in range(args.rounds):  # interleaved: every arm sees the same machine weather
                    for arm, target, lines in arms if r % 2 == 0 else arms[::-1]:  # neither arm always goes first
                        drain(url)
                        results.setdefault((n, conns, arm), []).append(wrk(target, lua, lines, conns, seconds))
    report(args, results, table_facts(url))


def paired(
    results: dict[tuple[int, int, str], list[dict[str, float]]],
    key: tuple[int, int, str],
    metric: str,
    compare: Callable[[float, float], float],
) -> list[float]:
    """The service against the SQL it sends, round by round: each round's two windows ran back to back, so the
    machine's weather (a load swing between rounds moves a ~1 s query by tens of ms) cancels within a pair."""
    n, conns, _ = key
    service, sent = results[(n, conns, SERVICE_ARM)], results[key]
    return [compare(a[metric], b[metric]) for a, b in zip(service, sent, strict=True)]


def report(args: argparse.Namespace, results: dict[tuple[int, int, str], list[dict[str, float]]], facts: str) -> None:
    how = "index distances" if args.index_distances else "exact similarity (index query as IN subquery, hits by id)"
    print(
        f"serve bench: {args.rows:,} rows, {facts}, {how}, k=40, {QUERIES} query rows, "
        f"wrk {args.seconds} s (num_result_ids 3000: {args.seconds_large} s) × {args.rounds} rounds (median), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
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
    sent = INDEX_ARM if args.index_distances else SENT_ARM
    print(
        f"overhead = /knn-service − {sent!r} (the one SQL the service sends, same settings), per round (the two "
        "arms back to back), then the median of the rounds [min–max]"
    )
    for n in (40, 3000):
        overs = paired(results, (n, 1, sent), "p50", lambda a, b: a - b)
        ratios = paired(results, (n, 8, sent), "qps", lambda a, b: a / max(b, 1e-9))
        line = (
            f"num_result_ids {n}: p50 overhead at c=1 {statistics.median(overs):+.2f} ms "
            f"[{min(overs):+.2f}–{max(overs):+.2f}] (goal <= 5); "
            f"QPS at c=8 {statistics.median(ratios):.2f}x raw [{min(ratios):.2f}–{max(ratios):.2f}] (goal >= 0.8)"
        )
        if sent != INDEX_ARM:
            exact = med[(n, 1, SENT_ARM)]["p50"] - med[(n, 1, INDEX_ARM)]["p50"]
            q = med[(n, 8, SENT_ARM)]["qps"] / max(med[(n, 8, INDEX_ARM)]["qps"], 1e-9)
            line += f"; exactness (sent vs index query): p50 {exact:+.2f} ms at c=1, QPS {q:.2f}x at c=8"
        print(line)


if __name__ == "__main__":
    main()
