"""Under a memory budget: `index --max-memory` on a loaded chdb table, then an independent `eval` (issue #22).

Run: python bench/budget.py --db DIR [--max-memory 6G] [--queries 50] [--seed 7]

DIR is a chdb directory holding `default.laion` (e.g. a size of bench/growth.py kept with `cp -al` while its
eval ran, since the growth bench removes each size's directory). Any vector index on image_embedding is dropped
first, so `index` tunes and builds under the budget from scratch. The vector index cache is raised to 12 GiB
(as in the growth bench) by a config.xml beside DIR. Prints what `index` chose and sized against the budget, the
memory ClickHouse reports once loaded, the check's recall and an independent eval's recall@10 and latency.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import growth  # noqa: E402  (its `sql` child and the cache size it raises, so both benches read the same way)


def ingest(cwd: Path, *args: str) -> str:
    res = subprocess.run(growth.ingest(*args), cwd=cwd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"ingest {args[0]} exited {res.returncode}:\n{res.stderr[-3000:]}")
    return res.stdout + res.stderr


def sql(db: Path, query: str) -> str:
    """One query on the chdb directory, through growth's child (one process per data directory)."""
    return growth.timed([growth.PY, growth.__file__, "sql", str(db), query], db.parent).out.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--max-memory", default="6G")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    cwd = args.db.resolve().parent
    (cwd / "config.xml").write_text(f"<clickhouse>{growth.CACHE_XML}</clickhouse>")
    indexes = sql(args.db, "SELECT name FROM system.data_skipping_indices WHERE table = 'laion' FORMAT TSV")
    for name in indexes.split():
        sql(args.db, f"ALTER TABLE default.laion DROP INDEX {name}")
    rows = sql(args.db, "SELECT count() FROM default.laion").strip()
    target = f"chdb:{args.db.resolve()}"
    report = cwd / "budget-index.json"
    said = ingest(
        cwd,
        "index",
        "--target",
        target,
        "--recall-target",
        "0.95",
        "--max-memory",
        args.max_memory,
        "--no-progress",
        "--report",
        str(report),
    )
    (cwd / "budget-index.out").write_text(said)
    ev = json.loads(
        ingest(cwd, "eval", "--target", target, "--queries", str(args.queries), "--seed", str(args.seed), "--json")
        .strip()
        .splitlines()[-1]
    )
    entry = json.loads(report.read_text())["indexes"][0]
    keep = ("chose", "projected index memory", "image_index:")
    lines = [x for x in said.splitlines() if x.startswith(keep) and "rows indexed" not in x]
    print(f"## index --max-memory {args.max_memory} on {int(rows):,} rows, then eval --queries {args.queries}")
    print("\n".join(lines))
    mem = entry["memory_bytes"] or 0
    print(f"built {entry['structure']}: {mem / (1 << 30):.2f} GiB loaded (ClickHouse), budget {args.max_memory}")
    sweep = ev["sweep"][0]
    print(
        f"eval: recall@10 {ev['recall_at_10']:.3f} at search list {ev['hnsw_candidate_list_size_for_search']}, "
        f"p50 {sweep['p50_ms']:.1f} ms, p99 {sweep['p99_ms']:.1f} ms; "
        f"brute force p50 {ev['brute_force_median_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
