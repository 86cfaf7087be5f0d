"""The table's schema from the first readable shard: the vector dimension from its npy header (unless --dim),
the extra columns' types from its parquet schema. Reads headers and footers only."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from ingest.core.config import LoadConfig
from ingest.core.errors import BadShardError, UsageError
from ingest.core.schema import Column, TableSchema, column_for
from ingest.stages.npy import read_npy_header
from ingest.stages.shard import ShardFiles


def needs_probe(load: LoadConfig) -> bool:
    return load.dim is None or bool(load.extra_columns)


def schema_from_flags(load: LoadConfig, dim: int) -> TableSchema:
    return TableSchema(dim=dim, vector_codec=load.vector_codec)


def infer_schema(files: ShardFiles, load: LoadConfig) -> TableSchema:
    """Dimension and extra column types from one shard; BadShardError if its files cannot say,
    UsageError if the flags ask for a column it does not have (or one we cannot type)."""
    dim = load.dim
    if dim is None:
        dim = read_npy_header(files.img, files.shard, "img_emb", None).dim
    extras: list[Column] = []
    if load.extra_columns:
        try:
            arrow_schema = pq.read_schema(files.meta)
        except FileNotFoundError as exc:
            raise BadShardError(files.shard, f"metadata file missing: {files.meta}") from exc
        except (pa.ArrowException, OSError) as exc:
            raise BadShardError(files.shard, f"metadata {files.meta.name}: unreadable parquet ({exc})") from exc
        for name in load.extra_columns:
            if name not in arrow_schema.names:
                have = ", ".join(arrow_schema.names)
                raise UsageError(
                    f"--extra-columns: {files.meta.name} (shard {files.shard}) has no column {name}; it has {have}"
                )
            col = column_for(name, arrow_schema.field(name).type)
            if col is None:
                raise UsageError(
                    f"--extra-columns: column {name} of {files.meta.name} has type {arrow_schema.field(name).type}, "
                    "which has no ClickHouse mapping here (numbers, booleans and strings do)"
                )
            extras.append(col)
    return TableSchema(dim=dim, extras=tuple(extras), vector_codec=load.vector_codec)
