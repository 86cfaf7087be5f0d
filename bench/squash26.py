"""What a 26.9 server spends on the shape of our INSERT bodies: the same 17 segments, two POSTs at a time, by curl.

Run: python bench/squash26.py [--rows 1000000] [--repeat 2] [--data-dir DIR]

Our segments (one INSERT each, with the settings ours sends: squash to the segment's rows, 0 bytes) are encoded
once by our own reader and encoder, two ways: in our 4,096-row Native blocks (what `run` sends) and as one Native
block per segment. curl sends them (no client CPU of ours in the figures), two at a time as our two insert workers
do; curl's one POST of the whole shard (65,536-row blocks) is the reference. Per path, min–max over interleaved
rounds of: wall, the server process's CPU (/proc), and from `system.query_log` the CPU of the INSERTs themselves
(user, system) and their soft page faults.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import big  # noqa: E402 - the big shard's cache, /proc CPU and min–max helpers
import harness as bench  # noqa: E402 - the shared helpers (bench/harness.py)
from server26 import DB, LOGS, Stats, inserts_since, wait_logged  # noqa: E402


def write_segments(src: Path, out: Path, one_block: bool) -> None:
    """Our segments of shard 0, one Native file each (+ its rows), in our blocks or as one block per segment."""
    import pyarrow as pa

    from ingest.clickhouse.wire import encode
    from ingest.core.plan import plan_segments
    from ingest.stages.shard import ShardFiles, read_segment, validate_shard

    tmp = out.with_suffix(".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    valid = validate_shard(ShardFiles.in_dir(src, 0), 512, "fail-shard")
    for seg in plan_segments(0, valid.rows, text_bytes=valid.text_bytes):
        blocks = list(read_segment(valid, seg)) if one_block else read_segment(valid, seg)
        if one_block:
            blocks = pa.Table.from_batches(blocks).combine_chunks().to_batches()
        with (tmp / f"seg{seg.index:04d}.native").open("wb") as f:
            for b in blocks:
                for part in encode(b, "native"):
                    f.write(part)
        (tmp / f"seg{seg.index:04d}.rows").write_text(str(seg.rows))
    tmp.replace(out)


def post_segments(url: str, seg_dir: Path, workers: int = 2) -> None:
    """Each segment file as its own INSERT with our squash settings, `workers` at a time."""
    from ingest.clickhouse.settings import Squash, insert_settings

    def post(f: Path) -> None:
        rows = int(f.with_suffix(".rows").read_text())
        settings = insert_settings(
            token=None, squash=Squash(rows), dedup_token=False, async_insert=True, skip_indexes=False
        )
        query = {"query": f"INSERT INTO {DB}.laion FORMAT Native", "database": DB, "wait_end_of_query": 1, **settings}
        target = "/?" + urlencode(query)
        subprocess.run(["curl", "-sSf", "-X", "POST", "-T", str(f), "--request-target", target, url], check=True)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(post, sorted(seg_dir.glob("*.native"))))


def insert_stats(handle, since: str) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    """(user s, system s, soft page faults) of this table's INSERTs since `since`, once all of them are logged."""
    wait_logged(handle, since)
    row = handle.query(
        "SELECT sum(ProfileEvents['UserTimeMicroseconds']) / 1e6, sum(ProfileEvents['SystemTimeMicroseconds']) / 1e6, "
        "sum(ProfileEvents['SoftPageFaults']) FROM system.query_log "
        f"WHERE type = 'QueryFinish' AND {inserts_since(since)}"
    )
    user, system, faults = row.decode().split()
    return float(user), float(system), int(faults)


def section_squash26(work: Path, rows: int, repeat: int, data: Path = big.DEFAULT_DATA) -> None:
    from chdb_server import start_ch26

    src, native = big.ensure_data(data, rows)
    dirs = {}
    for name in ("blocks", "one"):
        dirs[name] = data / f"shard-{rows}.segments-{name}"
        if not dirs[name].exists():
            subprocess.run([bench.PY, __file__, "segments", str(src), str(dirs[name]), name], check=True)
    handle = start_ch26(work / "ch26", extra_config=LOGS, password="")
    try:
        handle.query(f"CREATE DATABASE IF NOT EXISTS {DB}")
        stats = Stats(handle, work / "ledger.json")
        whole = f"/?query=INSERT%20INTO%20{DB}.laion%20FORMAT%20Native"
        paths = {
            "our 17 segments, 4,096-row blocks, 2 at a time": lambda: post_segments(handle.http_url, dirs["blocks"]),
            "our 17 segments, one block each, 2 at a time": lambda: post_segments(handle.http_url, dirs["one"]),
            "the shard in one POST, 65,536-row blocks": lambda: subprocess.run(
                ["curl", "-sSf", "-X", "POST", "-T", str(native), "--request-target", whole, handle.http_url],
                check=True,
            ),
        }
        figures: dict[str, list[tuple[float, float, float, float, int]]] = {label: [] for label in paths}
        for r in range(repeat + 1):
            for label, send in paths.items():
                stats.reset()
                before = big.proc_cpu_seconds(handle.pid) or 0.0
                t0 = time.monotonic()
                send()
                wall = time.monotonic() - t0
                server = (big.proc_cpu_seconds(handle.pid) or 0.0) - before
                user, system, faults = insert_stats(handle, stats.since)
                print(f"  {'warm-up' if r == 0 else f'round {r}':8s} {label:50s} {wall:7.1f} s wall")
                if r > 0:
                    figures[label].append((wall, server, user, system, faults))
        version = handle.query("SELECT version()").decode().strip()
        print(f"\n## ClickHouse {version}: the server's cost of our body shape, {rows:,} rows (min–max of {repeat})")
        print(
            f"{'path (curl sends)':50s} {'wall s':>12s} {'server CPU s':>13s} {'INSERT user s':>14s} "
            f"{'INSERT sys s':>13s} {'page faults k':>14s}"
        )
        for label, runs in figures.items():
            cols = [big.span([x[i] for x in runs]) for i in range(4)] + [big.span([x[4] / 1e3 for x in runs], "{:.0f}")]
            print(f"{label:50s} {cols[0]:>12s} {cols[1]:>13s} {cols[2]:>14s} {cols[3]:>13s} {cols[4]:>14s}")
    finally:
        handle.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "segments":
        write_segments(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "one")
        return
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2, help="timed rounds per path (after one warm-up)")
    ap.add_argument("--data-dir", type=Path, default=big.DEFAULT_DATA)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="laion-squash26-"))
    print(f"# laion-ingest squash bench — {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores")
    print(f"# {bench.OURS_IS}")
    try:
        section_squash26(work, args.rows, max(1, args.repeat), args.data_dir)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
