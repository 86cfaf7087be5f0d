"""Fixed-size Arrow record batches in the table's column order. Pure: arrays in, batch out."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.core.plan import ID_STRIDE, BatchPlan

META_COLUMNS = ("url", "caption", "NSFW", "similarity")
STRING_COLUMNS = ("url", "caption", "NSFW")


def batch_schema(dim: int) -> pa.Schema:
    vec = pa.list_(pa.float32(), dim)
    return pa.schema(
        [
            ("id", pa.int64()),
            ("url", pa.string()),
            ("caption", pa.string()),
            ("NSFW", pa.string()),
            ("similarity", pa.float32()),
            ("image_embedding", vec),
            ("text_embedding", vec),
        ]
    )


def _vectors(block: np.ndarray) -> pa.FixedSizeListArray:
    """float16 → float32 is exact widening; float32 passes through without a copy."""
    flat = np.ascontiguousarray(block, dtype=np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=pa.float32()), block.shape[1])


def _text(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Null → '' (ClickHouse String is not nullable), bytes kept exactly."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_large_string(arr.type) or pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        arr = arr.cast(pa.string())
    elif not pa.types.is_string(arr.type):
        arr = pc.cast(arr, pa.string())
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    return arr


def build_batch(
    plan: BatchPlan,
    img: np.ndarray,
    txt: np.ndarray,
    meta: pa.Table,
    drop_rows: np.ndarray | None = None,
) -> pa.RecordBatch:
    """Rows `plan.start..plan.stop` of one shard as a batch; `drop_rows` (positions in the window) are skipped."""
    ids = np.arange(plan.first_id, plan.first_id + plan.rows, dtype=np.int64)
    sim = meta.column("similarity").combine_chunks()
    sim = pc.cast(sim, pa.float32())
    if sim.null_count:
        sim = pc.fill_null(sim, float("nan"))
    arrays: list[pa.Array] = [
        pa.array(ids),
        _text(meta.column("url")),
        _text(meta.column("caption")),
        _text(meta.column("NSFW")),
        sim,
        _vectors(img),
        _vectors(txt),
    ]
    batch = pa.RecordBatch.from_arrays(arrays, schema=batch_schema(img.shape[1]))
    if drop_rows is not None and len(drop_rows):
        keep = np.ones(plan.rows, dtype=bool)
        keep[drop_rows] = False
        batch = batch.filter(pa.array(keep))
    return batch


def shard_of(row_id: int) -> tuple[int, int]:
    """(shard, row) of an id."""
    return divmod(row_id, ID_STRIDE)
