"""The 26.9 server section: the 1,000,000-row shard into a ClickHouse 26.9 server (from chdb-core), three ways.

Run: python bench/server26.py [--rows 1000000] [--repeat 3] [--shards 1] [--data-dir DIR]
     (or bench/run.py --sections server26)

--shards N loads shards 0..N-1 in one run of each path (curl: all of them in one POST): the steady state a
LAION-400M load is in: the start (imports, the first shard's parquet check and NaN/Inf scan) is paid once, and
later shards are checked while the earlier one's last segments are sent.

  ours                 `laion-ingest run` with its defaults, into the server's HTTP port (the table's background
                       merges stopped while it loads and started at its end: ingest/sinks/merge_hold.py)
  ours, merges during  the same with `--merges during`: the server merges parts while the load adds them
  clickhouse-connect   the peer our users would pick: ClickHouse's official client in a plain, well-written script
                       (bench/peer_clickhouse_connect.py: npy memory-mapped, parquet via pyarrow, float16 widened,
                       one `insert_arrow` per 100,000 rows)
  curl                 `curl -X POST -T shard.native`: the shard pre-encoded as Native in one POST (the ceiling)

One untimed warm-up round, then `--repeat` interleaved rounds (ours, peer, curl, ours, ...), each into a freshly
created table. Per path, min–max of wall, CPU of the loading process, the server process's CPU during the run (from
/proc), peak RSS, active parts right after the load and body bytes the server received (`system.query_log`'s
NetworkReceiveBytes of the run's INSERTs); then ours / curl and ours / peer wall, from the fastest and from the
slowest rounds, and per round, min–max and median (the two runs of a round are seconds apart, so that ratio is the
least noisy).
The shard and its Native file are big.py's cache (--data-dir, default $LAION_BENCH_DATA).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import big  # noqa: E402 - the big shard's cache and the min–max table of bench/big.py
import harness as bench  # noqa: E402 - the shared helpers (bench/harness.py): process measuring and command lines
from soak_driver import wait_until  # noqa: E402 - tests/soak_driver.py: poll a condition until a deadline

DB = "bench"
LOGS = "".join(
    f"<{name}><database>system</database><table>{name}</table>"
    f"<flush_interval_milliseconds>1000</flush_interval_milliseconds></{name}>"
    for name in ("query_log", "part_log")
)
"""query_log (bytes received per INSERT) and part_log (parts written and merged), which the 26.9 config lacks."""
LOG_WAIT_SECONDS = 10.0
"""How long after a load its INSERTs may take to reach query_log (flushed every second, and on SYSTEM FLUSH LOGS)."""


class Stats:
    """Resets the table before a run; after it, the parts left and the bytes the server received for the run."""

    def __init__(self, handle, state: Path) -> None:  # type: ignore[no-untyped-def]
        self.handle = handle
        self.reset_table = bench.reset_server_table(handle, DB, state)
        self.since = ""

    def reset(self) -> None:
        # SYNC: 26.9's Atomic database keeps a dropped table's files for 8 minutes, ~4 GB a load here
        self.handle.query(f"DROP TABLE IF EXISTS {DB}.laion SYNC")
        self.reset_table()
        self.since = self.handle.query("SELECT now64(6)").decode().strip()

    def after(self) -> tuple[int | None, int | None]:
        q = self.handle.query
        wait_logged(self.handle, self.since)
        parts = q(f"SELECT count() FROM system.parts WHERE database = '{DB}' AND table = 'laion' AND active")
        received = q(
            "SELECT sum(ProfileEvents['NetworkReceiveBytes']) FROM system.query_log WHERE type = 'QueryFinish' "
            f"AND {inserts_since(self.since)}"
        )
        return int(parts.decode().strip()), int(received.decode().strip() or 0)


def inserts_since(since: str) -> str:
    """query_log's condition for the INSERTs into the table since `since` (a server time, now64(6))."""
    return f"query_kind = 'Insert' AND has(tables, '{DB}.laion') AND event_time_microseconds >= '{since}'"


def wait_logged(handle, since: str) -> bool:  # type: ignore[no-untyped-def]
    """Flush the logs until every INSERT since `since` that started has ended in query_log (False: not within
    LOG_WAIT_SECONDS). The server logs an INSERT's end after it has answered, so a client that exits on the answer
    (curl's one POST) could beat the log: its bytes read 0 once in 12 rounds, and a load's last INSERT could go
    uncounted."""
    ended = "type IN ('QueryFinish', 'ExceptionWhileProcessing')"
    sql = f"SELECT countIf(type = 'QueryStart') - countIf({ended}) FROM system.query_log WHERE {inserts_since(since)}"

    def all_ended() -> bool:
        handle.query("SYSTEM FLUSH LOGS")
        return int(handle.query(sql).decode().strip()) <= 0

    return wait_until(all_ended, LOG_WAIT_SECONDS, step=0.2)


def section_server26(work: Path, rows: int, repeat: int, data: Path = big.DEFAULT_DATA, shards: int = 1) -> None:
    import importlib.util

    from chdb_server import start_ch26

    # find_spec, not an import: chdb's engine in this process would become every child's peak RSS (ru_maxrss
    # keeps the forking process's high-water mark across exec)
    if importlib.util.find_spec("chdb") is None:
        print("\n(26.9 section skipped: chdb-core is not installed)")
        return
    bench.PROCESS_TIMEOUT = max(bench.PROCESS_TIMEOUT, big.BIG_TIMEOUT)
    src, native = big.ensure_data(data, rows, shards)
    spec, listed = f"0-{shards - 1}", ",".join(map(str, range(shards)))
    work.mkdir(parents=True, exist_ok=True)
    handle = start_ch26(work / "ch26", extra_config=LOGS, password="")
    try:
        handle.query(f"CREATE DATABASE IF NOT EXISTS {DB}")
        stats = Stats(handle, work / "ledger.json")
        reset, after = stats.reset, stats.after
        # -T appends the file's name to a URL ending in '/', which 26.9 answers with 404: the target goes verbatim
        target = f"/?query=INSERT%20INTO%20{DB}.laion%20FORMAT%20Native"
        peer = HERE / "peer_clickhouse_connect.py"
        paths = [
            big.Path_(
                f"ours → HTTP 26.9 ({shards * rows:,} rows)",
                lambda: bench.ours_http(src, handle, DB, spec, work / "ledger.json"),
                reset,
                after,
            ),
            big.Path_(
                "ours --merges during",
                lambda: bench.ours_http(src, handle, DB, spec, work / "ledger.json", "--merges", "during"),
                reset,
                after,
            ),
            big.Path_(
                "clickhouse-connect insert_arrow, 100k rows/insert",
                lambda: [bench.PY, str(peer), handle.http_url, DB, str(src), listed, "100000"],
                reset,
                after,
            ),
            big.Path_(
                "curl -X POST -T shard.native (ceiling)",
                lambda: ["curl", "-sSf", "-X", "POST", "-T", str(native), "--request-target", target, handle.http_url],
                reset,
                after,
            ),
        ]
        big.interleave(repeat, paths, handle.pid)
        version = handle.query("SELECT version()").decode().strip()
        what = f"one {rows:,}-row shard" if shards == 1 else f"{shards} shards of {rows:,} rows, one run"
        title = f"7. ClickHouse {version} (chdb-core) over HTTP, {what} (min–max of {repeat} rounds)"
        big.print_paths(title, paths)
        ours, during, cc, curl = paths
        for name, path in (("ours", ours), ("ours --merges during", during)):
            print(f"{name} / curl wall = {big.wall_ratio(path, curl)}   per round {per_round(path, curl)}")
            print(f"{name} / clickhouse-connect wall = {big.wall_ratio(path, cc)}   per round {per_round(path, cc)}")
    finally:
        handle.stop()


def per_round(a: big.Path_, b: big.Path_) -> str:
    """The ratio of the two paths' walls within each round, min–max over the rounds and their median."""
    ratios = [x.seconds / y.seconds for x, y in zip(a.runs, b.runs, strict=True)]
    return f"{big.span(ratios, '{:.2f}')} (median {statistics.median(ratios):.2f})"


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds per path (after one warm-up)")
    ap.add_argument("--shards", type=int, default=1, help="load shards 0..N-1 in one run (curl: one POST of all)")
    ap.add_argument("--data-dir", type=Path, default=big.DEFAULT_DATA, help="cache for the shard and its Native file")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="laion-ch26-"))
    print(f"# laion-ingest 26.9 bench — {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores")
    print(f"# {bench.OURS_IS}")
    try:
        section_server26(work, args.rows, max(1, args.repeat), args.data_dir, max(1, args.shards))
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
