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


class RowRange:
    """Rows [start, stop) of one shard and the ids they get: what batches and segments have in common."""

    __slots__ = ()
    shard: int
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
        """Inclusive upper id of the range."""
        return self.shard * ID_STRIDE + self.stop - 1


@dataclass(frozen=True, slots=True)
class BatchPlan(RowRange):
    """One fixed batch of one shard: rows [start, stop). Fixed batch size makes every batch identifiable."""

    shard: int
    index: int
    start: int
    stop: int

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


BLOCK_ROWS = 4096
"""Default rows per block (the unit read, encoded and streamed): ~17 MB of LAION rows; what bounds our memory."""
SEGMENT_ROWS = 65_536
"""Default cap on rows per segment (one INSERT = one part); at dim 512 the byte bound below is what cuts (~61k LAION
rows). ClickHouse advises 10k–100k rows per INSERT."""
SEGMENT_BYTES = 256 << 20
"""Default byte bound of a segment: ClickHouse's own `min_insert_block_size_bytes` default (256 MiB), so a segment
is no larger than a part the server would make of one big INSERT (fewer, larger parts: fewer merges)."""
TEXT_BYTES_PER_ROW = 512
"""Allowance for url + caption + NSFW per row when a shard's own text bytes are not known (LAION averages ~150)."""


def row_bytes(dim: int, text_bytes: int = TEXT_BYTES_PER_ROW) -> int:
    """What one row weighs in a ClickHouse block: id, similarity, two Array(Float32) with offsets, three Strings
    (offsets, `text_bytes` of values, a terminator each)."""
    return 8 + 4 + 2 * (4 * dim + 8) + 3 * 9 + text_bytes


@dataclass(frozen=True, slots=True)
class SegmentPlan(RowRange):
    """One committed unit of a shard: rows [start, stop), sent as one INSERT (one part) in blocks of `block_rows`.

    The id range, the dedup token and the ledger entry are per segment; the blocks only bound memory.
    """

    shard: int
    index: int
    start: int
    stop: int
    block_rows: int
    cut: int
    """Rows per segment of the plan this segment belongs to (the last segment of a shard may be shorter)."""

    def blocks(self) -> list[BatchPlan]:
        """The segment's blocks, numbered within the shard (block i covers rows i*block_rows...)."""
        first = self.start // self.block_rows
        return [
            BatchPlan(self.shard, first + i, start, min(start + self.block_rows, self.stop))
            for i, start in enumerate(range(self.start, self.stop, self.block_rows))
        ]

    def token(self, table_key: str) -> str:
        """Deterministic insert_deduplication_token: same table, shard, cut and index → same token (and blocks)."""
        return f"laion-ingest:{table_key}:s{self.shard}:g{self.cut}x{self.block_rows}:i{self.index}"

    def query_id(self, table_key: str) -> str:
        """The `query_id` of every INSERT of this segment's id range into the table, from any run: a server refuses
        a second query with the id of one still running (code 216), and the landing waits until none runs before
        it counts the range (issue #19). Not secret: table and ids only."""
        return f"laion-ingest:{table_key}:{self.first_id}-{self.last_id}"


def segment_size(
    segment_rows: int, segment_bytes: int, block_rows: int, dim: int, text_bytes: int = TEXT_BYTES_PER_ROW
) -> tuple[int, int]:
    """(rows per segment, rows per block) for a cut: at most `segment_rows` rows and `segment_bytes` estimated
    bytes (`text_bytes` a row for the texts), a whole number of blocks when a segment holds more than one block."""
    if block_rows < 1:
        raise UsageError(f"--batch-rows must be >= 1, got {block_rows}")
    if segment_rows < 1:
        raise UsageError(f"--segment-rows must be >= 1, got {segment_rows}")
    per_row = row_bytes(dim, text_bytes)
    if segment_bytes < per_row:
        raise UsageError(f"--segment-bytes {segment_bytes} is less than one row ({per_row} bytes at dim {dim})")
    rows = min(segment_rows, segment_bytes // per_row)
    if rows >= block_rows:
        return rows - rows % block_rows, block_rows
    return rows, rows


def plan_segments(
    shard: int,
    rows: int,
    segment_rows: int = SEGMENT_ROWS,
    block_rows: int = BLOCK_ROWS,
    *,
    segment_bytes: int = SEGMENT_BYTES,
    dim: int = 512,
    text_bytes: int = TEXT_BYTES_PER_ROW,
) -> list[SegmentPlan]:
    """Cut `rows` into segments (the last one shorter), each read and sent in blocks. Pure. `text_bytes`: the
    shard's measured text bytes a row (ValidShard.text_bytes), else an allowance."""
    if rows >= ID_STRIDE:
        raise UsageError(f"shard {shard}: {rows} rows do not fit the id stride {ID_STRIDE}")
    per, block = segment_size(segment_rows, segment_bytes, block_rows, dim, text_bytes)
    return [
        SegmentPlan(shard, i, start, min(start + per, rows), block, per) for i, start in enumerate(range(0, rows, per))
    ]
