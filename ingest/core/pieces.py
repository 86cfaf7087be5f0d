"""What a segment's insert body is made of, as its reader hands it to a sink: row blocks, or one column-major block.

Row blocks (`pa.RecordBatch`, a few thousand rows each) are what RowBinary and the embedded engine's pipe take.
A Native body can instead be the whole segment as ONE block, streamed column by column with bounded memory:
`BlockStart` (columns, rows), then per column a `ColumnStart` followed by runs of that column's values (`pa.Array`
slices, in row order, adding up to the block's rows). A server then never squashes a segment (a fresh
segment-sized copy of every block it got: most of the CPU a 26.9 server spent on our INSERTs beyond a plain
POST), and our reader holds the segment's small scalar columns and one window of a vector column at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import pyarrow as pa


@dataclass(frozen=True, slots=True)
class BlockStart:
    """A column-major block of `rows` rows in `schema`'s columns begins: its columns follow in order."""

    schema: pa.Schema
    rows: int
    nbytes: int | None = None
    """The whole block's Native size when its reader knows it: the body then goes with a Content-Length (no chunked
    framing, which aiohttp on Python < 3.12.9 builds by joining a copy of every chunk)."""


@dataclass(frozen=True, slots=True)
class ColumnStart:
    """The next column of the block: `field`, then runs of its values adding up to the block's `rows`."""

    field: pa.Field
    rows: int


Piece: TypeAlias = pa.RecordBatch | BlockStart | ColumnStart | pa.Array
"""One item of a segment's stream: a row block, or a piece of a column-major block."""
