"""Side-by-side benchmark: whole processes, one run, ratios printed. Run: python bench/run.py [--sections ...]

Sections:
  chdb      ours → chdb vs ClickHouse's PASTE JOIN path in chdb vs INSERT of a pre-encoded RowBinary file
  http      ours → loopback clickhouse-server (Native, RowBinary) vs curl --data-binary of pre-encoded RowBinary
  tutorial  ours vs the tutorial's pandas → CSV → INSERT path (small shard: it is slow)
  index     HNSW index: the tutorial's parameters vs index --recall-target 0.95 (bench/index_bench.py)
  rss       peak RSS of ours (→ HTTP server, so the database's memory is another process's) at 50k vs 400k rows
  big       the real-size shard (--big-rows, 1,000,000): ours vs embedding-reader vs Native file in chdb; ours vs
            curl -T of the whole shard as Native on the server; wall, CPU, RSS, parts, bytes (bench/big.py)
  server26  the 1,000,000-row shard into a ClickHouse 26.9 server (chdb-core): ours vs a clickhouse-connect script
            vs curl's one POST of the pre-encoded Native shard (bench/server26.py)
  growth    1M, 2M and 4M rows on chdb and a 26.9 server: load, index phases, memory, recall, latency, and the
            projection from 1M checked at 4M (bench/growth.py; 4 × 1M-row shards cached in $LAION_GROWTH_DATA)
  cluster   vector search on a 2-shard 26.9 cluster, --rows split over 2 source shards: index --cluster, then
            recall@10 and latency of both routes against brute force over the whole table (bench/cluster_bench.py)
Every figure here is noisy on a shared 2-core machine; compare ratios from the same run, never absolute times.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from harness import (  # noqa: E402 - the shared helpers (bench/harness.py)
    OURS_IS,
    PY,
    Measure,
    best_of,
    compare,
    fresh,
    measure,
    ours_chdb,
    ours_http,
    print_table,
    reset_server_table,
    start_server,
    synth,
)


def section_chdb(work: Path, rows: int, repeat: int) -> None:
    src = work / "src"
    synth(src, 0, rows)
    db = work / "db"
    reset = fresh(db)

    def reset_all() -> None:
        reset()
        Path(str(db) + ".ledger.json").unlink(missing_ok=True)

    reset_all()
    measure("warm-up", ours_chdb(src, db, 0))  # also the rows the ceiling file is exported from
    rb = work / "rows.rowbinary"
    subprocess.run([PY, str(HERE / "expert_chdb.py"), "export", str(db), "laion", str(rb)], check=True)
    ours, paste, ceil = compare(
        repeat,
        [
            (f"ours → chdb ({rows:,} rows)", lambda: ours_chdb(src, db, 0), reset_all),
            (
                "ClickHouse file(npy) PASTE JOIN file(parquet), chdb",
                lambda: [PY, str(HERE / "expert_chdb.py"), "paste", str(db), str(src), "0"],
                reset,
            ),
            (
                "INSERT pre-encoded RowBinary file, chdb (ceiling)",
                lambda: [PY, str(HERE / "expert_chdb.py"), "ceiling", str(db), str(rb)],
                reset,
            ),
        ],
    )
    print_table(
        f"1. embedded chdb, one {rows:,}-row shard (min of {repeat} interleaved rounds)", [ours, paste, ceil], paste
    )
    print(
        f"ours / PASTE JOIN = {ours.seconds / paste.seconds:.2f}  (target ≤ 0.8)   "
        f"ours / ceiling = {ours.seconds / ceil.seconds:.2f}"
    )


def section_tutorial(work: Path, rows: int, repeat: int) -> None:
    try:
        import pandas  # noqa: F401
    except ImportError:
        print("\n## 3. tutorial path: skipped (pip install pandas to run the tutorial's process.py)")
        return
    src = work / "tsrc"
    synth(src, 0, rows)
    db = work / "tdb"
    csv = work / "shard0.csv"
    reset = fresh(db)
    process = best_of(
        repeat,
        "tutorial process.py: npy+parquet → CSV (pandas)",
        lambda: [
            PY,
            str(HERE / "tutorial_process.py"),
            str(src / "img_emb/img_emb_0.npy"),
            str(src / "text_emb/text_emb_0.npy"),
            str(src / "metadata/metadata_0.parquet"),
            str(csv),
        ],
    )
    load = best_of(
        repeat, "tutorial: INSERT CSV (chdb)", lambda: [PY, str(HERE / "tutorial_load.py"), str(db), str(csv)], reset
    )
    tutorial = Measure(
        "tutorial total (process + load)", process.seconds + load.seconds, max(process.peak_rss_mb, load.peak_rss_mb)
    )

    def reset_all() -> None:
        reset()
        Path(str(db) + ".ledger.json").unlink(missing_ok=True)

    ours = best_of(repeat, f"ours → chdb ({rows:,} rows)", lambda: ours_chdb(src, db, 0), reset_all)
    print_table(f"3. tutorial pandas → CSV → INSERT vs ours, {rows:,} rows", [process, load, tutorial, ours], ours)
    print(
        f"tutorial / ours = {tutorial.seconds / ours.seconds:.1f}× (target ≥ 50×); "
        f"CSV size {csv.stat().st_size / 1e6:.0f} MB for {rows:,} rows"
    )


def section_http(work: Path, rows: int, repeat: int) -> None:
    handle = start_server(work)
    if handle is None:
        return
    try:
        handle.query("CREATE DATABASE IF NOT EXISTS bench")
        src = work / "src"
        synth(src, 0, rows)
        state = work / "ledger.json"
        reset = reset_server_table(handle, "bench", state)
        reset()
        measure("warm-up", ours_http(src, handle, "bench", "0", state))  # also the rows exported for curl
        rb = work / "rows.rowbinary"
        # curl writes the export straight to disk: this process must stay small, or its RSS high-water mark is
        # inherited by every child it forks (Linux keeps it in ru_maxrss across exec)
        export = "SELECT%20*%20FROM%20bench.laion%20ORDER%20BY%20id%20FORMAT%20RowBinary"
        subprocess.run(
            ["curl", "-sSf", "-o", str(rb), "--data-binary", "", f"{handle.http_url}/?query={export}"], check=True
        )
        url = f"{handle.http_url}/?query=" + "INSERT%20INTO%20bench.laion%20FORMAT%20RowBinary"
        native, rowbin, curl = compare(
            repeat,
            [
                (
                    f"ours → HTTP server, Native ({rows:,} rows)",
                    lambda: ours_http(src, handle, "bench", "0", state),
                    reset,
                ),
                (
                    "ours → HTTP server, RowBinary",
                    lambda: ours_http(src, handle, "bench", "0", state, "--format", "rowbinary"),
                    reset,
                ),
                (
                    "curl --data-binary pre-encoded RowBinary (ceiling)",
                    lambda: ["curl", "-sSf", "--data-binary", f"@{rb}", url],
                    reset,
                ),
            ],
        )
        print_table(
            f"2. ClickHouse {handle.query('SELECT version()').decode().strip()} over HTTP, "
            f"one {rows:,}-row shard (min of {repeat} interleaved rounds)",
            [native, rowbin, curl],
            curl,
        )
        print(f"ours Native / curl RowBinary = {native.seconds / curl.seconds:.2f} (target ≤ 1.1)")
    finally:
        handle.stop()


def section_rss(work: Path, rows: int, repeat: int) -> None:
    handle = start_server(work)
    if handle is None:
        return
    try:
        handle.query("CREATE DATABASE IF NOT EXISTS bench")
        src = work / "src"
        # 100k and 1M rows, as #9 states the goal: both are several segments, so both keep every insert worker
        # streaming (a shard smaller than one segment would measure one worker's blocks in flight)
        synth(src, 0, 100_000)
        synth(src, 1, 1_000_000)
        state = work / "ledger.json"
        reset = reset_server_table(handle, "bench", state)
        small = best_of(1, "ours → HTTP, 100,000-row shard", lambda: ours_http(src, handle, "bench", "0", state), reset)
        big = best_of(1, "ours → HTTP, 1,000,000-row shard", lambda: ours_http(src, handle, "bench", "1", state), reset)
        print_table("4. peak RSS of ours (the server is another process)", [small, big], small)
        print(
            f"peak RSS 1M / 100k = {big.peak_rss_mb / small.peak_rss_mb:.2f} (target ≤ 1.3; "
            f"{big.peak_rss_mb:.0f} MB, target ≤ 400 MB)"
        )
    finally:
        handle.stop()


def section_index(work: Path, rows: int, repeat: int) -> None:
    from index_bench import section_index as run_index_section  # tutorial HNSW parameters vs --recall-target

    run_index_section(work, rows, rounds=max(3, repeat))


def section_big(work: Path, rows: int, repeat: int) -> None:
    from big import section_big as big

    big(work, rows, max(3, repeat))


def section_server26(work: Path, rows: int, repeat: int) -> None:
    from server26 import section_server26 as server26

    server26(work, rows, max(3, repeat))


def section_growth(work: Path, rows: int, repeat: int) -> None:
    from growth import DEFAULT_DATA
    from growth import section_growth as growth

    growth(work, [1, 2, 4], ["chdb", "http"], DEFAULT_DATA, 50)


def section_cluster(work: Path, rows: int, repeat: int) -> None:
    from cluster_bench import section_cluster as cluster

    cluster(work, rows // 2, max(3, repeat))


SECTIONS = {
    "chdb": section_chdb,
    "http": section_http,
    "tutorial": section_tutorial,
    "rss": section_rss,
    "index": section_index,
    "big": section_big,
    "server26": section_server26,
    "growth": section_growth,
    "cluster": section_cluster,
}


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sections",
        default="chdb,http,tutorial,rss,index",
        help="comma list of: " + ", ".join(SECTIONS) + " (big, server26, growth: 1M-row shards, only when named)",
    )
    ap.add_argument("--rows", type=int, default=100_000, help="rows of the main shard")
    ap.add_argument("--tutorial-rows", type=int, default=10_000)
    ap.add_argument("--big-rows", type=int, default=1_000_000, help="rows of the real-size shard (section big)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds per path (>= 3)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="laion-bench-"))
    stamp = time.strftime("%Y-%m-%d %H:%M")
    print(f"# laion-ingest bench — {stamp}, {os.cpu_count()} cores, python {sys.version.split()[0]}")
    print(f"# {OURS_IS}")
    try:
        for name in args.sections.split(","):
            rows = {"tutorial": args.tutorial_rows, "big": args.big_rows, "server26": args.big_rows}.get(
                name, args.rows
            )
            SECTIONS[name](work / name, rows, args.repeat)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
