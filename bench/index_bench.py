"""Index section of the bench: the tutorial's fixed HNSW parameters against `index --recall-target 0.95`.

One synthetic shard (100k rows by default) is loaded with our `run` into one chdb directory per arm (the same
rows, loaded the same way), then:
  tutorial  ALTER TABLE ADD INDEX ... ('hnsw', 'cosineDistance', 512, 'bf16', 64, 256) + MATERIALIZE INDEX
            (mutations_sync = 2) on the table as loaded, in its own process: what the tutorial does
  tuned     `laion-ingest index --recall-target 0.95`: sample, grid, choice, merge, build, check, record
Then for each: an independent `laion-ingest eval --json` (other query rows than the tuning used; the tuned arm
at its recorded search list, the tutorial's at the server default 256), index bytes from
system.data_skipping_indices, and p50 search latency through the index against brute force.
Run alone: python bench/index_bench.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import LAION_INGEST, OURS_IS, PY, synth  # noqa: E402 - how a timed run of ours starts (bench/harness.py)

TIMEOUT = 1800.0
TUTORIAL = ("bf16", 64, 256)


def _run(cmd: list[str], label: str) -> tuple[float, str]:
    start = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - start
    if res.returncode != 0:
        raise SystemExit(f"{label} failed ({res.returncode}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return seconds, res.stdout


TUTORIAL_SCRIPT = """
import sys
from chdb import session
s = session.Session(sys.argv[1])
q, m, ef = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s.query(f"ALTER TABLE laion ADD INDEX image_index image_embedding "
        f"TYPE vector_similarity('hnsw', 'cosineDistance', 512, '{q}', {m}, {ef})")
s.query("ALTER TABLE laion MATERIALIZE INDEX image_index SETTINGS mutations_sync = 2")
s.close()
"""

BYTES_SCRIPT = """
import sys
from chdb import session
s = session.Session(sys.argv[1])
print(s.query("SELECT sum(data_uncompressed_bytes) FROM system.data_skipping_indices "
              "WHERE table = 'laion' AND name = 'image_index'", "TSV").bytes().decode().strip())
s.close()
"""


def index_bytes(db: Path) -> int:
    _, out = _run([PY, "-c", BYTES_SCRIPT, str(db)], "index bytes")
    return int(out.strip() or 0)


def evaluate(db: Path, queries: int) -> dict[str, float]:
    cmd = [*LAION_INGEST, "eval", "--target", f"chdb:{db}", "--queries", str(queries), "--seed", "99", "--json"]
    _, out = _run(cmd, "eval")
    doc: dict[str, float] = json.loads(out)
    return doc


def section_index(work: Path, rows: int, queries: int = 100, rounds: int = 2) -> None:
    work.mkdir(parents=True, exist_ok=True)
    src = work / "src"
    synth(src, 0, rows)
    load = [*LAION_INGEST, "run", "--source", str(src), "--shards", "0", "--no-progress"]
    arms: dict[str, tuple[float, str]] = {}
    rounds_s: dict[str, list[float]] = {"tutorial": [], "tuned": []}
    for r in range(rounds):  # interleaved rounds, fresh load each time; the fastest round per arm is kept
        for arm in ("tutorial", "tuned"):
            db = work / arm
            shutil.rmtree(db, ignore_errors=True)
            state = work / f"{arm}.ledger.json"
            state.unlink(missing_ok=True)
            load_s, _ = _run([*load, "--target", f"chdb:{db}", "--state", str(state)], "load")
            if arm == "tutorial" and r == 0:
                print(f"\n## index: {rows:,} synthetic rows (loaded in {load_s:.1f} s), image_embedding, chdb")
            if arm == "tutorial":
                cmd = [PY, "-c", TUTORIAL_SCRIPT, str(db), *map(str, TUTORIAL)]
            else:
                cmd = [
                    PY,
                    "-m",
                    "ingest",
                    "index",
                    "--target",
                    f"chdb:{db}",
                    "--recall-target",
                    "0.95",
                    "--no-progress",
                ]
            seconds, out = _run(cmd, arm)
            print(f"round {r + 1}: {arm} {seconds:.1f} s")
            rounds_s[arm].append(seconds)
            if arm not in arms or seconds < arms[arm][0]:
                arms[arm] = (seconds, out)
    # the evals below read the last round's directories (same parameters as the kept round's)
    if "chose" in arms["tuned"][1]:
        print("tuned run said:")
        for line in arms["tuned"][1].splitlines():
            if line.startswith(("chose", "image_index:", "default.laion:", "total", "stopped")):
                print(f"  {line}")
    print(
        f"{'arm':<34} {'build s':>8} {'recall@10':>9} {'L':>5} {'index MiB':>9} "
        f"{'p50 ms':>7} {'brute p50 ms':>12} {'speed-up':>8}"
    )
    for arm, (seconds, _) in arms.items():
        ev = evaluate(work / arm, queries)
        size = index_bytes(work / arm) / (1 << 20)
        label = "tutorial bf16 M=64 ef_c=256" if arm == "tutorial" else "--recall-target 0.95 (tuning incl.)"
        p50, brute = float(ev["index_median_ms"]), float(ev["brute_force_median_ms"])
        print(
            f"{label:<34} {seconds:>8.1f} {ev['recall_at_10']:>9.3f} "
            f"{int(ev['hnsw_candidate_list_size_for_search']):>5} {size:>9.1f} {p50:>7.1f} {brute:>12.1f} "
            f"{brute / max(p50, 1e-9):>7.1f}×"
        )
    tut, tun = rounds_s["tutorial"], rounds_s["tuned"]
    print(
        f"tutorial {min(tut):.1f}–{max(tut):.1f} s, tuned {min(tun):.1f}–{max(tun):.1f} s over {rounds} rounds; "
        f"tuned / tutorial build time: {min(tun) / min(tut):.2f} (min/min), {max(tun) / max(tut):.2f} (max/max) "
        "(goal ≤ 0.33)"
    )


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the fastest per arm is kept")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="laion-index-bench-"))
    print(f"# laion-ingest index bench — {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores")
    print(f"# {OURS_IS}")
    try:
        section_index(work, args.rows, args.queries, args.rounds)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
