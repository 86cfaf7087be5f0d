"""Side-by-side benchmark: whole processes, one run, ratios printed. Run: python bench/run.py [--sections ...]

Sections:
  chdb      ours → chdb vs ClickHouse's PASTE JOIN path in chdb vs INSERT of a pre-encoded RowBinary file
  http      ours → loopback clickhouse-server (Native, RowBinary) vs curl --data-binary of pre-encoded RowBinary
  tutorial  ours vs the tutorial's pandas → CSV → INSERT path (small shard: it is slow)
  rss       peak RSS of ours (→ HTTP server, so the database's memory is another process's) at 50k vs 400k rows
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
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

PY = sys.executable


@dataclass
class Measure:
    label: str
    seconds: float
    peak_rss_mb: float


def measure(label: str, cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> Measure:
    """Wall time and peak RSS (ru_maxrss of the child and its waited-for children) of one whole process."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - t0
    out = proc.stdout.read().decode() if proc.stdout else ""
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{label} failed ({os.waitstatus_to_exitcode(status)}):\n{out}\n{err}")
    return Measure(label, seconds, usage.ru_maxrss / 1024)


def best_of(n: int, label: str, make_cmd, setup=None) -> Measure:  # type: ignore[no-untyped-def]
    """Minimum time over n runs (setup() before each, e.g. a fresh database dir); peak RSS of that run."""
    runs = []
    for _ in range(n):
        if setup is not None:
            setup()
        runs.append(measure(label, make_cmd()))
    return min(runs, key=lambda m: m.seconds)


def synth(root: Path, shard: int, rows: int) -> None:
    subprocess.run([PY, "-m", "ingest", "synth", "--out", str(root), "--shards", str(shard), "--rows", str(rows)],
                   check=True, stdout=subprocess.DEVNULL)


def fresh(path: Path):  # type: ignore[no-untyped-def]
    def reset() -> None:
        shutil.rmtree(path, ignore_errors=True)

    return reset


def ours_chdb(src: Path, db: Path, shard: int, *extra: str) -> list[str]:
    return [PY, "-m", "ingest", "run", "--source", str(src), "--shards", str(shard), "--target", f"chdb:{db}",
            "--no-progress", "--state", str(db) + ".ledger.json", *extra]


def print_table(title: str, rows: list[Measure], base: Measure) -> None:
    print(f"\n## {title}")
    print(f"{'path':58s} {'seconds':>8s} {'peak RSS MB':>12s} {'÷ ' + base.label[:20]:>24s}")
    for m in rows:
        print(f"{m.label:58s} {m.seconds:8.2f} {m.peak_rss_mb:12.0f} {m.seconds / base.seconds:24.2f}")


def section_chdb(work: Path, rows: int, repeat: int) -> None:
    src = work / "src"
    synth(src, 0, rows)
    db = work / "db"
    reset = fresh(db)

    def reset_all() -> None:
        reset()
        Path(str(db) + ".ledger.json").unlink(missing_ok=True)

    ours = best_of(repeat, f"ours → chdb ({rows:,} rows)", lambda: ours_chdb(src, db, 0), reset_all)
    rb = work / "rows.rowbinary"
    subprocess.run([PY, str(HERE / "expert_chdb.py"), "export", str(db), "laion", str(rb)], check=True)
    paste = best_of(repeat, "ClickHouse file(npy) PASTE JOIN file(parquet), chdb",
                    lambda: [PY, str(HERE / "expert_chdb.py"), "paste", str(db), str(src), "0"], reset)
    ceil = best_of(repeat, "INSERT pre-encoded RowBinary file, chdb (ceiling)",
                   lambda: [PY, str(HERE / "expert_chdb.py"), "ceiling", str(db), str(rb)], reset)
    print_table(f"1. embedded chdb, one {rows:,}-row shard (best of {repeat})", [ours, paste, ceil], paste)
    print(f"ours / PASTE JOIN = {ours.seconds / paste.seconds:.2f}  (target ≤ 0.8)   "
          f"ours / ceiling = {ours.seconds / ceil.seconds:.2f}")


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
    process = best_of(repeat, "tutorial process.py: npy+parquet → CSV (pandas)", lambda: [
        PY, str(HERE / "tutorial_process.py"), str(src / "img_emb/img_emb_0.npy"),
        str(src / "text_emb/text_emb_0.npy"), str(src / "metadata/metadata_0.parquet"), str(csv)])
    load = best_of(repeat, "tutorial: INSERT CSV (chdb)",
                   lambda: [PY, str(HERE / "tutorial_load.py"), str(db), str(csv)], reset)
    tutorial = Measure("tutorial total (process + load)", process.seconds + load.seconds,
                       max(process.peak_rss_mb, load.peak_rss_mb))

    def reset_all() -> None:
        reset()
        Path(str(db) + ".ledger.json").unlink(missing_ok=True)

    ours = best_of(repeat, f"ours → chdb ({rows:,} rows)", lambda: ours_chdb(src, db, 0), reset_all)
    print_table(f"3. tutorial pandas → CSV → INSERT vs ours, {rows:,} rows", [process, load, tutorial, ours], ours)
    print(f"tutorial / ours = {tutorial.seconds / ours.seconds:.1f}× (target ≥ 50×); "
          f"CSV size {csv.stat().st_size / 1e6:.0f} MB for {rows:,} rows")


SECTIONS = {"chdb": section_chdb, "tutorial": section_tutorial}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma list of: " + ", ".join(SECTIONS))
    ap.add_argument("--rows", type=int, default=100_000, help="rows of the main shard")
    ap.add_argument("--tutorial-rows", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="laion-bench-"))
    print(f"# laion-ingest bench — {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, python {sys.version.split()[0]}")
    try:
        for name in args.sections.split(","):
            rows = args.tutorial_rows if name == "tutorial" else args.rows
            SECTIONS[name](work / name, rows, args.repeat)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
