"""Which table layout makes serve's exact similarity cheap: by-id reads of scattered hits, per layout, and the cost.

serve reads each hit's stored vector by primary key (`WHERE id IN (…)`) for its exact similarity. ClickHouse reads
whole granules of the vector column for that: with the default adaptive granularity (10 MiB per granule, ~2,400
LAION rows) that is ~5 MiB per hit. For each layout `run` could create — fewer rows per granule
(`index_granularity`), `CODEC(NONE)` on the vectors, a smaller column-level `max_compress_block_size` — this copies a
loaded table (`INSERT … SELECT`, then `OPTIMIZE … FINAL` as `index` merges), then measures: by-id reads of 40 and
1000 random ids (the exact distance and the vector, as serve sends it; wall ms and bytes read from
system.query_log), a brute-force top-40 scan (no index), the copy's server CPU and wall, the size on disk.

Run alone: python bench/serve_layout.py --url http://127.0.0.1:PORT --source bench.laion [--reps 3]
(a running server holding a loaded table), or --work DIR (serve_bench.py's work dir: its server is started).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from ingest.clickhouse.knn_sql import exact_sql  # noqa: E402
from ingest.clickhouse.vector_sql import vector_literal  # noqa: E402
from ingest.core.ids import TableRef  # noqa: E402

VEC = "Array(Float32)"
LAYOUTS: dict[str, tuple[str, str]] = {
    # name: (vector column suffix, table SETTINGS)
    "default (8192 rows / 10 MiB)": ("", ""),
    "vectors CODEC(NONE)": (" CODEC(NONE)", ""),
    "vectors max_compress_block_size 64 KiB": (
        " SETTINGS (min_compress_block_size = 65536, max_compress_block_size = 65536)",
        "",
    ),
    "index_granularity 1024": ("", " SETTINGS index_granularity = 1024"),
    "index_granularity 256": ("", " SETTINGS index_granularity = 256"),
    "index_granularity 128": ("", " SETTINGS index_granularity = 128"),
    "index_granularity 64": ("", " SETTINGS index_granularity = 64"),
}


def server_cpu(url: str) -> float:
    """CPU seconds of the server process so far (it runs only our queries: a chdb-core server of this bench)."""
    port = urllib.parse.urlparse(url).port
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            cmd = (stat.parent / "cmdline").read_bytes().split(b"\0")
            if not any(b"chdb_server.py" in c for c in cmd):
                continue
            cfg = Path(cmd[-2].decode() if cmd[-1] == b"" else cmd[-1].decode()) / "config.xml"
            if f"<http_port>{port}</http_port>" not in cfg.read_text():
                continue
            fields = stat.read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            continue
    return float("nan")


def query(url: str, sql: str, **settings: Any) -> tuple[str, float, int, float]:
    """Body, wall ms, bytes read (X-ClickHouse-Summary), server CPU seconds (nan when not found)."""
    params = urllib.parse.urlencode({"user": "default", **settings})
    cpu0 = server_cpu(url)
    start = time.perf_counter()
    req = urllib.request.Request(f"{url}/?{params}", data=sql.encode())
    with urllib.request.urlopen(req, timeout=3600) as resp:
        body = resp.read().decode()
        summary = json.loads(resp.headers.get("X-ClickHouse-Summary", "{}"))
    ms = (time.perf_counter() - start) * 1000
    return body, ms, int(summary.get("read_bytes", 0)), server_cpu(url) - cpu0


def create_sql(url: str, source: str, target: str, vec_suffix: str, settings: str) -> str:
    body = query(url, f"DESCRIBE TABLE {source} FORMAT JSONEachRow")[0]
    cols = []
    for line in body.splitlines():
        c = json.loads(line)
        suffix = vec_suffix if c["type"] == VEC else ""
        cols.append(f"`{c['name']}` {c['type']}{suffix}")
    return f"CREATE TABLE {target} ({', '.join(cols)}) ENGINE = MergeTree ORDER BY id{settings}"


def measure(
    url: str, source: str, name: str, layout: tuple[str, str], reps: int, ids: dict[int, list[int]], vec: str
) -> str:
    target = f"{source.split('.')[0]}._layout_probe"
    query(url, f"DROP TABLE IF EXISTS {target} SYNC")
    query(url, create_sql(url, source, target, *layout))
    load = query(url, f"INSERT INTO {target} SELECT * FROM {source}")
    opt = query(url, f"OPTIMIZE TABLE {target} FINAL")
    body = query(
        url,
        "SELECT sum(bytes_on_disk) AS b, sum(rows) / sum(marks) AS g FROM system.parts "
        f"WHERE active AND database || '.' || table = '{target}' FORMAT JSONEachRow",
    )[0]
    parts = json.loads(body)
    ref = TableRef(*target.split("."))
    cells = []
    for n in (40, 1000):
        reads = [query(url, exact_sql(ref, "image_embedding", vec, ids[n], True) + " FORMAT Null") for _ in range(reps)]
        cells.append(f"{statistics.median(r[1] for r in reads):.0f}")
        cells.append(f"{statistics.median(r[2] for r in reads) / 2**20:.1f}")
    scan = f"SELECT id, cosineDistance(image_embedding, {vec}) AS d FROM {target} ORDER BY d LIMIT 40 FORMAT Null"
    scans = [query(url, scan)[1] for _ in range(reps)]
    query(url, f"DROP TABLE IF EXISTS {target} SYNC")
    return (
        f"| {name} | {parts['g']:.0f} | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} | "
        f"{statistics.median(scans):.0f} | {load[1] / 1000:.1f} | {load[3]:.1f} | "
        f"{opt[1] / 1000:.1f} | {opt[3]:.1f} | {float(parts['b']) / 2**30:.2f} |"
    )


def run(url: str, source: str, reps: int, only: list[str] | None) -> None:
    n = int(query(url, f"SELECT count() FROM {source}")[0])
    body = query(url, f"SELECT min(id), max(id) FROM {source} FORMAT JSONCompactEachRow")[0]
    lo, hi = json.loads(body)
    rng = random.Random(21)
    ids = {k: sorted(rng.sample(range(int(lo), int(hi) + 1), k)) for k in (40, 1000)}
    body = query(url, f"SELECT image_embedding FROM {source} WHERE id = {ids[40][0]} FORMAT JSONCompactEachRow")[0]
    vec = vector_literal([float(x) for x in json.loads(body)[0]])
    print(
        f"serve layout: {n:,} rows copied from {source}, {reps} reps (median), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        "| layout | rows/granule | by id 40 ms | MiB | by id 1000 ms | MiB | brute-force top-40 ms | "
        "copy s | copy CPU s | merge s | merge CPU s | GiB on disk |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, layout in LAYOUTS.items():
        if only and not any(o in name for o in only):
            continue
        print(measure(url, source, name, layout, reps, ids, vec), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running server holding --source")
    ap.add_argument("--work", type=Path, help="serve_bench.py's work dir (its server is started)")
    ap.add_argument("--source", default="bench.laion")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", nargs="*", help="layouts whose name contains one of these")
    args = ap.parse_args()
    if args.url:
        run(args.url, args.source, args.reps, args.only)
        return
    from chdb_server import start_ch26

    server = start_ch26(args.work / "ch", password="")
    try:
        run(server.http_url, args.source, args.reps, args.only)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
