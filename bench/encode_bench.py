"""Microbenchmark of ingest/encode.py on real-shaped batches. Run: python bench/encode_bench.py [--profile]

Batches come from a synthetic shard through the real reader (build_batch), so strings, nulls and float32 vectors
look like the pipeline's. Prints the median time per batch and rows/s for Native and RowBinary; `--profile`
adds a cProfile table per format. Shared 2-core machine: read the figures as ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from ingest.clickhouse.wire import Format, body_size, encode
from ingest.core.plan import plan_batches
from ingest.stages.shard import read_batches, validate_shard
from ingest.stages.synth import SynthSpec, write_shard


def batches(rows: int, batch_rows: int, dim: int) -> list[pa.RecordBatch]:
    with tempfile.TemporaryDirectory(prefix="encode-bench-") as tmp:
        files = write_shard(Path(tmp), 0, SynthSpec(rows=rows, dim=dim))
        valid = validate_shard(files, dim, "fail-shard")
        return [b for _, b in read_batches(valid, plan_batches(0, rows, batch_rows), batch_rows)]


def timed(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=8192 * 4)
    ap.add_argument("--batch-rows", type=int, default=8192)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    data = batches(args.rows, args.batch_rows, args.dim)
    first = data[0]
    print(f"{len(data)} batches × {first.num_rows} rows, dim {args.dim}")
    formats: tuple[Format, ...] = ("native", "rowbinary")
    for fmt in formats:
        size = body_size(encode(first, fmt))
        per = timed(lambda fmt=fmt: [encode(b, fmt) for b in data], args.repeat) / len(data)  # type: ignore[misc]
        print(
            f"{fmt:10s} {per * 1e3:7.2f} ms/batch  {first.num_rows / per:12,.0f} rows/s  "
            f"{size / per / 1e9:5.2f} GB/s of body  ({size / 1e6:.1f} MB per batch)"
        )
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.repeat):
                for b in data:
                    encode(b, fmt)
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(8)


if __name__ == "__main__":
    main()
