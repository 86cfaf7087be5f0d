"""Vector search on a 2-shard ClickHouse 26.9 cluster (loopback, one server process per shard, no coordinator).

Run: python bench/cluster_bench.py [--rows 50000] [--repeat 3] [--queries 30]

Loads 2 source shards of --rows rows (512-d) with `run --cluster` (the Distributed table spreads them by
cityHash64(id)), builds the index with `index --cluster` (tuned to recall 0.95: each shard's index sized and built
for its own rows), then measures `eval --cluster` — recall@10 against brute force over the whole table (through
the Distributed table, `use_skip_indexes = 0`) and latency — by both routes, interleaved rounds: `distributed`
(the query through the Distributed table; every shard uses its index, as EXPLAIN distributed=1 shows on 26.9) and
`shards` (each shard's local table queried, top-k merged in our process). Prints min–max over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from harness import LAION_INGEST, OURS_IS, synth  # noqa: E402 - the shared helpers (bench/harness.py)

from ingest.vector.sizing import formula_bytes  # noqa: E402


def cli(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [*LAION_INGEST, *args], cwd=HERE.parent, env={**os.environ, **env}, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"{args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def span(values: list[float], fmt: str = "{:.1f}") -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


def section_cluster(work: Path, rows: int, repeat: int, queries: int = 30) -> None:
    from cluster26_fixtures import start_cluster26

    src = work / "src"
    for shard in (0, 1):
        synth(src, shard, rows)
    cluster = start_cluster26(work / "cluster")
    try:
        env = cluster.env()
        target = ["--target", cluster.entry.http_url, "--cluster", cluster.name, *cluster.node_flags()]
        t0 = time.monotonic()
        cli(env, "run", "--source", str(src), "--shards", "0-1", "--no-progress", "--state", str(work / "l.json"),
            *target)  # fmt: skip
        load_s = time.monotonic() - t0
        t0 = time.monotonic()
        out = cli(env, "index", "--no-progress", *target)
        index_s = time.monotonic() - t0
        per_shard = [int(n.query("SELECT count() FROM default.laion_local")) for n in cluster.nodes]
        sizes = [
            int(
                n.query(
                    "SELECT sum(data_uncompressed_bytes) FROM system.data_skipping_indices WHERE table = 'laion_local'"
                )
            )
            for n in cluster.nodes
        ]
        chosen = re.search(r"chose (.*?), search list (\d+)", out)
        check = re.search(r"recall@10 (\d\.\d+) over the whole table", out)
        runs: dict[str, list[dict[str, object]]] = {"distributed": [], "shards": []}
        for _ in range(repeat):
            for route in runs:
                doc = cli(env, "eval", "--queries", str(queries), "--json", "--route", route, *target)
                runs[route].append(json.loads(doc))
        print(f"\n## cluster: 2 × ClickHouse 26.9 on loopback, {2 * rows:,} rows × 512 (min–max of {repeat} rounds)")
        print(
            f"load (run --cluster): {load_s:.1f} s; index --cluster (tune, build on both shards, check): "
            f"{index_s:.1f} s"
        )
        if chosen and check:
            print(f"chosen: {chosen.group(1)}, search list {chosen.group(2)}; recall@10 at the check {check.group(1)}")
        params = re.search(r"chose (\w+) M=(\d+)", out)
        for pos, (n, size) in enumerate(zip(per_shard, sizes, strict=True)):
            formula = ""
            if params:  # the documented formula, without the safety margin `index` adds when it refuses
                raw = formula_bytes(n, 512, params.group(1), int(params.group(2)))
                formula = f"; rows × dim × bytes + rows × M × 8 = {raw / 2**20:.1f} MiB"
            print(
                f"shard {pos + 1}: {n:,} rows, its own index {size / 2**20:.1f} MiB "
                f"(system.data_skipping_indices){formula}"
            )
        print(
            f"{'route':12s} {'recall@10':>12s} {'p50 ms':>12s} {'p99 ms':>12s} {'brute force p50 ms':>20s} "
            f"{'÷ brute':>9s}"
        )
        for route, docs in runs.items():
            p50 = [float(d["sweep"][0]["p50_ms"]) for d in docs]  # type: ignore[index]
            brute = [float(d["brute_force_median_ms"]) for d in docs]  # type: ignore[arg-type]
            assert all(d["route"] == route for d in docs), docs
            print(
                f"{route:12s} {span([float(d['recall_at_10']) for d in docs], '{:.3f}'):>12s} "  # type: ignore[arg-type]
                f"{span(p50):>12s} {span([float(d['sweep'][0]['p99_ms']) for d in docs]):>12s} "  # type: ignore[index]
                f"{span(brute):>20s} {span([a / b for a, b in zip(p50, brute, strict=True)], '{:.3f}'):>9s}"
            )
    finally:
        cluster.stop()


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[attr-defined]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000, help="rows per source shard (2 shards)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--queries", type=int, default=30)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="laion-cluster-bench-"))
    print(f"# laion-ingest cluster bench — {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores")
    print(f"# {OURS_IS}")
    try:
        section_cluster(work, args.rows, args.repeat, args.queries)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
