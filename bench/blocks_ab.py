"""A/B of our block shape on the 1,000,000-row shard: `run` with other `--batch-rows` / `--queue-depth` /
`--insert-concurrency` against the defaults (and curl's one POST on servers), interleaved rounds, no warm-up.

Run: python bench/blocks_ab.py --target 26|18|chdb [--repeat 3] [--arms 4096,30720,61440/ic1/q1]

An arm is `ROWS[/qN][/icN]`: `--batch-rows ROWS`, `--queue-depth N`, `--insert-concurrency N`. Per round and per
arm: wall, our CPU, the server process's CPU (/proc), our peak RSS, active parts; then big.py's min–max table and
each arm's wall over the first arm's and over curl's, per round.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import big  # noqa: E402 - the big shard's cache, /proc CPU and the min–max table
import harness as bench  # noqa: E402 - process measuring and command lines
import server26  # noqa: E402 - the 26.9 server's logs config, table reset and per-round ratio

FLAGS = {"q": "--queue-depth", "ic": "--insert-concurrency"}


def arm_flags(arm: str) -> list[str]:
    rows, *rest = arm.split("/")
    out = ["--batch-rows", rows]
    for bit in rest:
        key = "ic" if bit.startswith("ic") else "q"
        out += [FLAGS[key], bit[len(key) :]]
    return out


def run_rounds(repeat: int, paths: list[big.Path_], pid: int | None) -> None:
    for r in range(1, repeat + 1):
        for p in paths:
            p.setup()
            before = big.proc_cpu_seconds(pid)
            m = bench.measure(p.label, p.cmd())
            after = big.proc_cpu_seconds(pid)
            parts, sent = p.after()
            server = (after - before) if before is not None and after is not None else 0.0
            print(
                f"  round {r} {p.label:20s} {m.seconds:7.1f} s wall {m.cpu_seconds:6.1f} s CPU srv {server:6.1f} "
                f"rss {m.peak_rss_mb:5.0f} parts {parts}  {time.strftime('%H:%M:%S')}"
            )
            p.runs.append(m)
            p.parts.append(parts or 0)
            if before is not None and after is not None:
                p.server_cpu.append(server)
            if sent:
                p.sent.append(sent)


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", choices=("26", "18", "chdb"), default="26")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--arms", default="4096,30720,61440")
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    bench.PROCESS_TIMEOUT = max(bench.PROCESS_TIMEOUT, big.BIG_TIMEOUT)
    src, native = big.ensure_data(big.DEFAULT_DATA, args.rows)
    work = Path(tempfile.mkdtemp(prefix="blocks-ab-", dir="/var/tmp"))
    state, db = work / "ledger.json", work / "db"
    handle = None
    try:
        if args.target == "26":
            from chdb_server import start_ch26

            handle = start_ch26(work / "ch26", extra_config=server26.LOGS, password="")
        elif args.target == "18":
            handle = bench.start_server(work)
            if handle is None:
                return
        if handle is not None:
            handle.query("CREATE DATABASE IF NOT EXISTS bench")
        reset, after = setup_target(args.target, handle, state, db)
        paths = []
        for arm in args.arms.split(","):
            flags = arm_flags(arm)
            if handle is None:
                cmd: Callable[[], list[str]] = lambda f=flags: bench.ours_chdb(src, db, 0, *f)  # noqa: E731
            else:
                cmd = lambda f=flags: bench.ours_http(src, handle, "bench", "0", state, *f)  # noqa: E731
            paths.append(big.Path_(f"ours b{arm}", cmd, reset, after))
        if handle is not None:
            target = "/?query=INSERT%20INTO%20bench.laion%20FORMAT%20Native"
            curl = ["curl", "-sSf", "-X", "POST", "-T", str(native), "--request-target", target, handle.http_url]
            paths.append(big.Path_("curl", lambda: curl, reset, after))
        run_rounds(args.repeat, paths, handle.pid if handle is not None else None)
        big.print_paths(f"blocks A/B, target {args.target}, {args.rows:,} rows ({args.repeat} rounds)", paths)
        for p in paths[1:]:
            print(f"{p.label} / {paths[0].label}: per round {server26.per_round(p, paths[0])}")
        if handle is not None:
            for p in paths[:-1]:
                print(f"{p.label} / curl: per round {server26.per_round(p, paths[-1])}")
    finally:
        if handle is not None:
            handle.stop()
        shutil.rmtree(work, ignore_errors=True)


def setup_target(kind: str, handle, state: Path, db: Path):  # type: ignore[no-untyped-def]
    """(reset, after) for the target: a fresh table or database before a run, its active parts after it."""
    if kind == "26":
        stats = server26.Stats(handle, state)
        return stats.reset, stats.after
    if kind == "18":
        sql = "SELECT count() FROM system.parts WHERE database = 'bench' AND table = 'laion' AND active"
        return bench.reset_server_table(handle, "bench", state), lambda: (int(handle.query(sql).strip()), None)

    def reset() -> None:
        shutil.rmtree(db, ignore_errors=True)
        Path(str(db) + ".ledger.json").unlink(missing_ok=True)

    return reset, lambda: (big.chdb_parts(db), None)


if __name__ == "__main__":
    main()
