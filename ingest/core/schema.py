"""The table's one column model: base columns, extra metadata columns, the vector codec.

Both the ClickHouse DDL (clickhouse/sql.py) and the Arrow batch schema (stages/batch.py) are derived from a
`TableSchema`, so the two can never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from ingest.core.errors import UsageError
from ingest.core.ids import validate_ident

VectorCodec = Literal["none", "lz4", "zstd"]
CODEC_SQL: dict[str, str] = {"none": "NONE", "lz4": "LZ4", "zstd": "ZSTD(1)"}

EMBEDDING_COLUMNS = ("image_embedding", "text_embedding")
META_COLUMNS = ("url", "caption", "NSFW", "similarity")
"""Metadata columns every shard must have (the tutorial's)."""
STRING_COLUMNS = ("url", "caption", "NSFW")

DEFAULT_DIM = 512
DEFAULT_INDEX_GRANULARITY = 256
"""Rows per granule of the tables `run` creates (ClickHouse's default: 8,192 rows or 10 MiB, ~2,400 LAION rows).
A read by primary key decompresses whole granules: serve's exact similarity reads each hit's granule of the vector
column, 256 × 2 KiB instead of ~2,400 × 2 KiB (bench/serve_layout.py; README "Table layout")."""

# Arrow type of a parquet column → (ClickHouse type, Arrow type in a batch); nulls become '' / 0 / NaN.
_TYPE_MAP: tuple[tuple[pa.DataType, str], ...] = (
    (pa.int8(), "Int8"),
    (pa.int16(), "Int16"),
    (pa.int32(), "Int32"),
    (pa.int64(), "Int64"),
    (pa.uint8(), "UInt8"),
    (pa.uint16(), "UInt16"),
    (pa.uint32(), "UInt32"),
    (pa.uint64(), "UInt64"),
    (pa.float32(), "Float32"),
    (pa.float64(), "Float64"),
)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    ch_type: str
    arrow_type: pa.DataType


def column_for(name: str, source_type: pa.DataType) -> Column | None:
    """The typed column for a parquet column of `source_type`, or None when we have no lossless mapping."""
    for arrow, ch in _TYPE_MAP:
        if source_type == arrow:
            return Column(name, ch, arrow)
    if pa.types.is_boolean(source_type):
        return Column(name, "UInt8", pa.uint8())  # Bool is not a type on older servers
    if pa.types.is_float16(source_type):
        return Column(name, "Float32", pa.float32())
    if is_text(source_type) or pa.types.is_null(source_type):
        return Column(name, "String", pa.string() if not pa.types.is_binary(source_type) else pa.binary())
    return None


def is_text(dtype: pa.DataType) -> bool:
    """Arrow string or binary, large or not: what becomes a ClickHouse String."""
    return bool(
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_binary(dtype)
        or pa.types.is_large_binary(dtype)
    )


def parse_extra_columns(flag: str | None) -> tuple[str, ...]:
    """`key,width,height` → names; refuses duplicates and the base columns."""
    if not flag:
        return ()
    names = tuple(n.strip() for n in flag.split(",") if n.strip())
    base = {c.name for c in base_columns(1)}
    for n in names:
        validate_ident(n, "extra column")
        if n in base:
            raise UsageError(f"--extra-columns: {n} is already a column of the table")
    if len(set(names)) != len(names):
        raise UsageError(f"--extra-columns: a column is named twice in {flag!r}")
    return names


def base_columns(dim: int) -> tuple[Column, ...]:
    vec = pa.list_(pa.float32(), dim)
    return (
        Column("id", "Int64", pa.int64()),
        Column("url", "String", pa.string()),
        Column("caption", "String", pa.string()),
        Column("NSFW", "String", pa.string()),
        Column("similarity", "Float32", pa.float32()),
        Column("image_embedding", "Array(Float32)", vec),
        Column("text_embedding", "Array(Float32)", vec),
    )


@dataclass(frozen=True, slots=True)
class TableSchema:
    """The tutorial's seven columns (vectors of `dim`), then `extras` in flag order."""

    dim: int = DEFAULT_DIM
    extras: tuple[Column, ...] = ()
    vector_codec: VectorCodec | None = None
    """None: the tutorial's DDL (no CODEC clause, the server's default compression)."""
    index_granularity: int = DEFAULT_INDEX_GRANULARITY

    @property
    def columns(self) -> tuple[Column, ...]:
        return base_columns(self.dim) + self.extras

    @property
    def extra_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.extras)

    @property
    def meta_columns(self) -> tuple[str, ...]:
        """Columns read from each shard's parquet."""
        return META_COLUMNS + self.extra_names

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([(c.name, c.arrow_type) for c in self.columns])

    def codec(self, column: str) -> str | None:
        """The CODEC(...) body of a column, or None for no clause."""
        if column in EMBEDDING_COLUMNS and self.vector_codec is not None:
            return CODEC_SQL[self.vector_codec]
        return None

    def describe(self) -> list[tuple[str, str]]:
        """(name, type) pairs as DESCRIBE TABLE reports them."""
        return [(c.name, c.ch_type) for c in self.columns]


DEFAULT_SCHEMA = TableSchema()
