"""Fixed-size Arrow record batches in the table's column order. Pure: arrays in, batch out."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.core.arrays import filled, keep_mask, numeric, vectors
from ingest.core.plan import ID_STRIDE, BatchPlan, RowRange
from ingest.core.schema import META_COLUMNS, STRING_COLUMNS, Column, TableSchema
from ingest.stages.npy import widen

__all__ = ["META_COLUMNS", "STRING_COLUMNS", "batch_schema", "build_batch"]


def batch_schema(dim: int) -> pa.Schema:
    """The tutorial's table as Arrow (no extra columns); see TableSchema.arrow_schema."""
    return TableSchema(dim).arrow_schema()


def _vectors(block: np.ndarray) -> pa.FixedSizeListArray:
    """float16 widened exactly (npy.widen, which returns a C-contiguous array); float32 passes through without a
    copy."""
    return vectors(widen(block))


def _text(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Null → '' (ClickHouse String is not nullable), bytes kept exactly."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_large_string(arr.type) or pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type):
        arr = arr.cast(pa.string())
    elif not pa.types.is_string(arr.type):
        arr = pc.cast(arr, pa.string())
    if arr.null_count:
        arr = filled(arr, "")
    return arr


def _extra(column: pa.ChunkedArray, col: Column) -> pa.Array:
    """An extra metadata column in its table type; nulls as the base columns have them: '' / NaN / 0."""
    if col.ch_type == "String":
        return _text(column) if col.arrow_type == pa.string() else filled(column.combine_chunks(), b"")
    arr = pc.cast(column.combine_chunks(), col.arrow_type)
    if arr.null_count:
        arr = filled(arr, float("nan") if pa.types.is_floating(col.arrow_type) else 0)
    return arr


def scalar_columns(plan: RowRange, meta: pa.Table, schema: TableSchema) -> dict[str, pa.Array]:
    """Every column but the vectors for rows `plan.start..plan.stop`, by name: ids, texts, similarity, extras."""
    sim = pc.cast(meta.column("similarity").combine_chunks(), pa.float32())
    if sim.null_count:
        sim = filled(sim, float("nan"))
    columns = {
        "id": numeric(np.arange(plan.first_id, plan.first_id + plan.rows, dtype=np.int64)),
        "url": _text(meta.column("url")),
        "caption": _text(meta.column("caption")),
        "NSFW": _text(meta.column("NSFW")),
        "similarity": sim,
    }
    columns.update((c.name, _extra(meta.column(c.name), c)) for c in schema.extras)
    return columns


def build_batch(
    plan: BatchPlan,
    img: np.ndarray,
    txt: np.ndarray,
    meta: pa.Table,
    drop_rows: np.ndarray | None = None,
    schema: TableSchema | None = None,
) -> pa.RecordBatch:
    """Rows `plan.start..plan.stop` of one shard as a batch; `drop_rows` (positions in the window) are skipped."""
    schema = schema or TableSchema(img.shape[1])
    columns = scalar_columns(plan, meta, schema)
    columns["image_embedding"] = _vectors(img)
    columns["text_embedding"] = _vectors(txt)
    arrays = [columns[c.name] for c in schema.columns]
    batch = pa.RecordBatch.from_arrays(arrays, schema=schema.arrow_schema())
    if drop_rows is not None and len(drop_rows):
        batch = batch.filter(keep_mask(plan.rows, drop_rows))
    return batch


def shard_of(row_id: int) -> tuple[int, int]:
    """(shard, row) of an id."""
    return divmod(row_id, ID_STRIDE)
