"""Where the CPU of one load into a 26.9 server goes: ours against curl's one POST, the server's CPU split by thread.

Run: python bench/cpu26.py [--rows 1000000] [--repeat 2] [--data-dir DIR] [--paths ours,curl,...]

Paths beside `ours` and `curl` (for A/Bs of where the server's merge CPU comes from): `ours-512M` (`run
--segment-bytes 512M`: about half as many parts), `ours-stopped` and `curl-stopped` (the table's merges stopped
with SYSTEM STOP MERGES before the load, started after it).

Both loads are CPU-bound on this machine's two cores, so their wall is about (our CPU + the server's CPU) / 2 and
every CPU-second either side spends lands on the wall. Per path and round (interleaved, no warm-up, a fresh table
each): wall, CPU of the loading process, the server's CPU from /proc/PID/task grouped by thread name (`ThreadPool`:
query pipelines, i.e. parsing and writing the INSERTs; `MergeMutate`: background merges; the rest), and the
INSERTs' own user / system CPU and soft page faults from `system.query_log`. Min–max over the rounds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import big  # noqa: E402 - the big shard's cache and min–max helpers
import harness as bench  # noqa: E402 - process measuring and command lines
from server26 import DB, LOGS  # noqa: E402
from squash26 import insert_stats  # noqa: E402

GROUPS = ("ThreadPool", "MergeMutate")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of the server's live threads by group (threads that ended in between are lost: few, short)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        group = name if name in GROUPS else "other"
        out[group] = out.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--data-dir", type=Path, default=big.DEFAULT_DATA)
    ap.add_argument(
        "--paths", default="ours,curl", help="comma-separated: ours, curl, ours-512M, ours-stopped, curl-stopped"
    )
    args = ap.parse_args()
    from chdb_server import start_ch26

    bench.PROCESS_TIMEOUT = max(bench.PROCESS_TIMEOUT, big.BIG_TIMEOUT)
    src, native = big.ensure_data(args.data_dir, args.rows)
    with tempfile.TemporaryDirectory(prefix="cpu26-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        handle = start_ch26(work / "ch26", extra_config=LOGS, password="")
        try:
            handle.query(f"CREATE DATABASE IF NOT EXISTS {DB}")
            reset = bench.reset_server_table(handle, DB, work / "ledger.json")
            target = f"/?query=INSERT%20INTO%20{DB}.laion%20FORMAT%20Native"
            known = {
                "ours": lambda: bench.ours_http(src, handle, DB, "0", work / "ledger.json"),
                "ours-512M": lambda: bench.ours_http(src, handle, DB, "0", work / "ledger.json", "--segment-bytes",
                                                     "512M"),
                "curl": lambda: ["curl", "-sSf", "-X", "POST", "-T", str(native), "--request-target", target,
                                 handle.http_url],
            }  # fmt: skip
            known["ours-stopped"], known["curl-stopped"] = known["ours"], known["curl"]
            paths = {name: known[name] for name in args.paths.split(",")}
            rows: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
            for rnd in range(1, args.repeat + 1):
                for name, cmd in paths.items():
                    handle.query(f"DROP TABLE IF EXISTS {DB}.laion SYNC")
                    reset()
                    stopped = name.endswith("-stopped")
                    if stopped:
                        handle.query(f"SYSTEM STOP MERGES {DB}.laion")
                    since = handle.query("SELECT now64(6)").decode().strip()
                    before = thread_cpu(handle.pid)
                    m = bench.measure(name, cmd())
                    after = thread_cpu(handle.pid)
                    if stopped:
                        handle.query(f"SYSTEM START MERGES {DB}.laion")
                    user, system, faults = insert_stats(handle, since)
                    row = {"wall": m.seconds, "ours": m.cpu_seconds, "insert user": user, "insert sys": system,
                           "faults k": faults / 1000}  # fmt: skip
                    for group in (*GROUPS, "other"):
                        row[group] = after.get(group, 0.0) - before.get(group, 0.0)
                    row["server"] = sum(row[g] for g in (*GROUPS, "other"))
                    row["parts"] = float(
                        handle.query(
                            f"SELECT count() FROM system.parts WHERE database = '{DB}' AND table = 'laion' AND active"
                        ).decode()
                    )
                    rows[name].append(row)
                    print(f"  round {rnd} {name:13s} " + "  ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)
        finally:
            handle.stop()
    keys = list(next(iter(rows.values()))[0])
    print(f"\n## CPU of one {args.rows:,}-row load into 26.9 (min–max of {args.repeat} rounds)")
    print("path          " + "".join(f"{k:>13s}" for k in keys))
    for name, runs in rows.items():
        print(f"{name:13s} " + "".join(f"{big.span([r[k] for r in runs]):>13s}" for k in keys))


if __name__ == "__main__":
    main()
