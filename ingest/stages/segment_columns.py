"""One segment read column by column: the pieces of ONE Native block (ingest/core/pieces.py), memory bounded.

The scalar columns (ids, texts, similarity, extras: ~200 bytes a LAION row) are read for the whole segment at
once; each vector column then follows window by window from its .npy file (a second pass over the segment's rows
per vector column, pread into a reused buffer, float16 widened straight into a float32 window from `WindowPool`).
So we hold the scalars and a window or two, never the segment's vectors, and the server gets the segment as
one block: nothing to squash. NaN/Inf rows dropped by validation (`--on-nan skip-row`) are left out of every
column alike.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Generator

import numpy as np
import pyarrow as pa

from ingest.clickhouse.wire import native_block_bytes
from ingest.core.arrays import keep_mask, vectors
from ingest.core.pieces import BlockStart, ColumnStart, Piece
from ingest.core.plan import SegmentPlan
from ingest.stages.batch import scalar_columns
from ingest.stages.npy import NpyInfo, read_rows_into, widen
from ingest.stages.shard import MetaCursor, ValidShard

FLOAT32 = np.dtype(np.float32)


class WindowPool:
    """Window buffers (the float32 runs, the float16 read scratch), each handed out again once nothing refers to it.

    A fresh buffer costs the kernel a zeroed page per 4 KiB at first touch (2 GB of windows a 1M-row shard): up
    to 6% of a load's CPU in `clear_page`. A window's Arrow array, the encoder's views of it and the body chunks
    the transport still holds all refer to the buffer (numpy views point at the array that owns the memory), so a
    buffer whose only reference is this pool's is free to overwrite. Buffers are only made when none is free, so
    the pool holds at most as many as were ever in flight at once (the read-ahead queues bound that).
    """

    IDLE_REFS = 2
    """`sys.getrefcount` of a buffer only the pool's list refers to (the list's, and the call's argument)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffers: list[np.ndarray] = []

    def take(self, rows: int, dim: int, dtype: np.dtype[np.floating] = FLOAT32) -> np.ndarray:
        """A C-contiguous (rows, dim) buffer nobody else uses (contents undefined)."""
        with self._lock:
            for i in range(len(self._buffers)):  # by index: a loop variable would be one more reference
                if sys.getrefcount(self._buffers[i]) == self.IDLE_REFS and self._fits(i, rows, dim, dtype):
                    return self._buffers[i]
            buffer = np.empty((rows, dim), dtype=dtype)
            self._buffers.append(buffer)
            return buffer

    def _fits(self, i: int, rows: int, dim: int, dtype: np.dtype[np.floating]) -> bool:
        return self._buffers[i].shape == (rows, dim) and self._buffers[i].dtype == dtype


def read_segment_columns(shard: ValidShard, segment: SegmentPlan, windows: WindowPool) -> Generator[Piece, None, None]:
    """Yield the segment as one column-major block: BlockStart, then per column its ColumnStart and runs.

    Every call reads afresh (a retried insert re-reads its segment); nothing is yielded for a segment whose rows
    were all dropped.
    """
    lo, hi = np.searchsorted(shard.drop_rows, [segment.start, segment.stop])
    drop = shard.drop_rows[lo:hi]
    rows = segment.rows - len(drop)
    if rows == 0:
        return
    meta = MetaCursor(shard, segment.block_rows, segment.start)
    scalars = scalar_columns(segment, meta.take(segment.start, segment.stop), shard.schema)
    del meta
    if len(drop):
        kept = keep_mask(segment.rows, drop - segment.start)
        scalars = {name: arr.filter(kept) for name, arr in scalars.items()}
    npy_of = {"image_embedding": shard.img, "text_embedding": shard.text}
    schema = shard.schema.arrow_schema()
    yield BlockStart(schema, rows, native_block_bytes(schema, rows, scalars))
    for field in schema:
        yield ColumnStart(field, rows)
        if field.name in npy_of:
            yield from _vector_runs(npy_of[field.name], segment, drop, windows)
        else:
            yield scalars.pop(field.name)


def _vector_runs(
    info: NpyInfo, segment: SegmentPlan, drop: np.ndarray, windows: WindowPool
) -> Generator[pa.Array, None, None]:
    """The segment's rows of one .npy file as float32 fixed-size-list runs of `segment.block_rows` rows."""
    window = segment.block_rows
    narrow = info.dtype != np.float32
    scratch = windows.take(window, info.dim, info.dtype) if narrow else None
    fd = os.open(info.path, os.O_RDONLY)
    try:
        for start in range(segment.start, segment.stop, window):
            n = min(window, segment.stop - start)
            out = windows.take(window, info.dim)[:n]  # a buffer no earlier run still refers to
            if scratch is None:
                read_rows_into(info, start, fd, out)
            else:
                read_rows_into(info, start, fd, scratch[:n])
                widen(scratch[:n], out)
            gone = drop[(drop >= start) & (drop < start + n)] - start
            if len(gone):
                out = np.delete(out, gone, axis=0)
            yield vectors(out)
    finally:
        os.close(fd)
