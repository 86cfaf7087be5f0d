"""Pure planning: which shards, which batches, which ids. No I/O here."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ingest.core.errors import UsageError

ID_STRIDE = 10_000_000
"""`id = shard * ID_STRIDE + row`: unique across shards (LAION shards hold ~1M rows, far below the stride)."""

_PART = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_shard_spec(spec: str) -> list[int]:
    """`"0-2,5,7-9"` → `[0, 1, 2, 5, 7, 8, 9]` (sorted, unique)."""
    shards: set[int] = set()
    if not spec.strip():
        raise UsageError("empty shard spec: expected something like 0-2,5,7-9")
    for part in spec.split(","):
        m = _PART.match(part)
        if m is None:
            raise UsageError(f"bad shard spec part {part.strip()!r}: expected N or N-M, e.g. 0-2,5,7-9")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise UsageError(f"bad shard range {part.strip()!r}: {hi} < {lo}")
        shards.update(range(lo, hi + 1))
    return sorted(shards)


def worker_slice(shards: list[int], worker_index: int, worker_count: int) -> list[int]:
    """Deterministic, disjoint share of one worker: shards with `shard % count == index`."""
    if worker_count < 1:
        raise UsageError(f"--worker-count must be >= 1, got {worker_count}")
    if not 0 <= worker_index < worker_count:
        raise UsageError(f"--worker-index must be in 0..{worker_count - 1}, got {worker_index}")
    return [s for s in shards if s % worker_count == worker_index]


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """One fixed batch of one shard: rows [start, stop). Fixed batch size makes every batch identifiable."""

    shard: int
    index: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start

    @property
    def first_id(self) -> int:
        return self.shard * ID_STRIDE + self.start

    @property
    def last_id(self) -> int:
        """Inclusive upper id of the batch."""
        return self.shard * ID_STRIDE + self.stop - 1

    def token(self, table_key: str, batch_rows: int) -> str:
        """Deterministic insert_deduplication_token: same table, shard, batch size and index → same token."""
        return f"laion-ingest:{table_key}:s{self.shard}:b{batch_rows}:i{self.index}"


def plan_batches(shard: int, rows: int, batch_rows: int) -> list[BatchPlan]:
    """Cut `rows` into batches of `batch_rows` (the last one shorter). An empty shard has no batches."""
    if batch_rows < 1:
        raise UsageError(f"--batch-rows must be >= 1, got {batch_rows}")
    if rows >= ID_STRIDE:
        raise UsageError(f"shard {shard}: {rows} rows do not fit the id stride {ID_STRIDE}")
    return [
        BatchPlan(shard, i, start, min(start + batch_rows, rows)) for i, start in enumerate(range(0, rows, batch_rows))
    ]
