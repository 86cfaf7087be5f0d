"""Issue #19's manual reproductions, as the issue ran them, against a loopback 18.16 with both cores busy.

A: 3 shards x 150,000 rows; kill -9 the server once rows appear, start it again 5 s later; `--tries` times, each
   into a fresh database. Reports each run's exit code and the table's rows, duplicates and lost rows.
B: 4 shards x 250,000 rows; kill -9 the ingester at a random moment 1-4 s (seeded) after each of 4 runs landed its
   first new rows (here, with both cores busy, a run needs ~30 s to start inserting: counted from its start, every
   kill came before the first INSERT), then one run to the end. Reports rows, duplicates and lost rows. `--tries`
   times, with seeds --seed, --seed+1, ..., each into a fresh database.

    python bench/repro_issue19.py --work /tmp/repro19 [--tries 3] [--seed 19] [--part AB]

Rows are checked on the server (count, uniqExact(id), and every id of every shard present), not byte by byte:
the tests (tests/test_faults_load.py, tests/test_faults_twin.py) check byte-exact on smaller tables.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from harness import LAION_INGEST  # noqa: E402 - this checkout's program, never an older install (bench/harness.py)
from server_fixtures import ServerHandle, start_clickhouse  # noqa: E402

from ingest.stages.synth import SynthSpec, write_shard  # noqa: E402

BURN = "while :; do :; done"


def shards(root: Path, count: int, rows: int) -> Path:
    for s in range(count):
        if not (root / "metadata" / f"metadata_{s}.parquet").exists():
            write_shard(root, s, SynthSpec(rows=rows, seed=s))
    return root


def run_args(src: Path, url: str, db: str, ledger: Path, spec: str) -> list[str]:
    return [*LAION_INGEST, "run", "--source", str(src), "--shards", spec, "--target", url,
            "--database", db, "--state", str(ledger), "--no-progress"]  # fmt: skip


def table_state(h: ServerHandle, db: str, shards: int, rows: int) -> str:
    if int(h.query(f"SELECT count() FROM system.tables WHERE database = '{db}' AND name = 'laion'")) == 0:
        return "no table yet"
    n, uniq = (int(x) for x in h.query(f"SELECT count(), uniqExact(id) FROM {db}.laion FORMAT TSV").split())
    full = int(
        h.query(
            f"SELECT count() FROM (SELECT intDiv(id, 10000000) AS s, uniqExact(id) AS u, min(id) % 10000000 AS lo, "
            f"max(id) % 10000000 AS hi FROM {db}.laion GROUP BY s HAVING u = {rows} AND lo = 0 AND hi = {rows - 1})"
        )
    )
    expected = shards * rows
    lost = expected - uniq
    return f"rows {n:,} / {expected:,}, duplicates {n - uniq:,}, lost {lost:,}, complete shards {full}/{shards}"


def landed(h: ServerHandle, db: str) -> int:
    if int(h.query(f"SELECT count() FROM system.tables WHERE database = '{db}' AND name = 'laion'")) == 0:
        return 0
    return int(h.query(f"SELECT count() FROM {db}.laion"))


def wait_rows(h: ServerHandle, db: str, proc: subprocess.Popen[bytes]) -> None:
    while proc.poll() is None:
        try:
            if int(h.query(f"SELECT count() FROM {db}.laion")) > 0:
                return
        except (RuntimeError, OSError):
            pass
        time.sleep(0.05)


def part_a(h: ServerHandle, work: Path, tries: int) -> None:
    src = shards(work / "src_a", 3, 150_000)
    for t in range(1, tries + 1):
        db = f"repro_a{t}"
        h.query(f"DROP DATABASE IF EXISTS {db}")
        h.query(f"CREATE DATABASE {db}")
        ledger = work / f"ledger_a{t}.json"
        ledger.unlink(missing_ok=True)
        args = run_args(src, h.http_url, db, ledger, "0-2")
        t0 = time.monotonic()
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        wait_rows(h, db, proc)
        h.kill()
        time.sleep(5)
        h.start()
        _out, err = proc.communicate()
        last = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        print(f"A try {t}: exit {proc.returncode} in {time.monotonic() - t0:.0f} s; {table_state(h, db, 3, 150_000)}")
        print(f"    last stderr line: {last[0][:200]}")
        if proc.returncode == 4:
            rerun = subprocess.run(args, capture_output=True, cwd=ROOT)
            print(f"    rerun: exit {rerun.returncode}; {table_state(h, db, 3, 150_000)}")


def part_b(h: ServerHandle, work: Path, seed: int, tries: int) -> None:
    for t in range(tries):
        part_b_try(h, work, seed + t, f"repro_b{t + 1}")


def part_b_try(h: ServerHandle, work: Path, seed: int, db: str) -> None:
    """Four kills at seeded moments, then a run to the end; the database is dropped after (1M rows each)."""
    rng = random.Random(seed)
    src = shards(work / "src_b", 4, 250_000)
    print(f"B seed {seed}:")
    h.query(f"DROP DATABASE IF EXISTS {db}")
    h.query(f"CREATE DATABASE {db}")
    ledger = work / f"ledger_{db}.json"
    ledger.unlink(missing_ok=True)
    args = run_args(src, h.http_url, db, ledger, "0-3")
    for k in range(1, 5):
        at = rng.uniform(1.0, 4.0)
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        started = time.monotonic()
        before = landed(h, db)
        while proc.poll() is None and landed(h, db) == before:
            time.sleep(0.02)
        print(f"B run {k}: new rows landed {time.monotonic() - started:.1f} s after start")
        time.sleep(at)
        proc.kill()
        proc.wait()
        running = h.query("SELECT count() FROM system.processes WHERE query LIKE 'INSERT INTO%'").decode().strip()
        print(f"B kill {k} at {at:.2f} s (exit {proc.returncode}); INSERTs still running on the server: {running}; "
              f"{table_state(h, db, 4, 250_000)}")  # fmt: skip
    final = subprocess.run(args, capture_output=True, cwd=ROOT)
    print(f"B final run: exit {final.returncode}; {table_state(h, db, 4, 250_000)}")
    h.query(f"DROP DATABASE {db}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--part", default="AB")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    h = start_clickhouse(a.work / "ch")
    burners = [subprocess.Popen(["bash", "-c", BURN]) for _ in range(os.cpu_count() or 2)]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop burners and server on SIGTERM too
    try:
        if "A" in a.part:
            part_a(h, a.work, a.tries)
        if "B" in a.part:
            part_b(h, a.work, a.seed, a.tries)
    finally:
        for b in burners:
            os.kill(b.pid, signal.SIGKILL)
            b.wait()
        h.stop()


if __name__ == "__main__":
    main()
