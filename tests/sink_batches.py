"""Batches and targets for the sink tests: a reproducible batch of random rows, the HTTP target config, and one
batch inserted as a one-block segment."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pyarrow as pa

from ingest.core.config import Credentials, TargetConfig
from ingest.core.ids import TableRef
from ingest.core.plan import ID_STRIDE, SegmentPlan
from ingest.core.target import parse_target
from ingest.sinks.http import HttpSink
from ingest.stages.batch import batch_schema


def sink_settings(url: str, db: str, *, user: str = "default", password: str = "", fmt: str = "native") -> TargetConfig:
    """The target config of an HTTP sink at `url`, database `db`."""
    return TargetConfig(
        spec=parse_target(url),
        database=db,
        credentials=Credentials(user, password),
        insert_format=fmt,  # type: ignore[arg-type]
    )


async def _blocks(*batches: pa.RecordBatch) -> AsyncIterator[pa.RecordBatch]:
    for b in batches:
        yield b


async def insert_one(sink: HttpSink, ref: TableRef, batch: pa.RecordBatch, token: str | None) -> None:
    """Insert one batch as a one-block segment (its ids from the batch, its place from its first id)."""
    first = int(batch.column(0)[0].as_py()) if batch.num_rows else 0
    shard, start = divmod(first, ID_STRIDE)
    seg = SegmentPlan(shard, 0, start, start + max(1, batch.num_rows), max(1, batch.num_rows), max(1, batch.num_rows))
    await sink.insert(ref, seg, _blocks(batch), token)


def small_batch(first_id: int, n: int, dim: int = 512) -> pa.RecordBatch:
    """`n` rows from id `first_id`, the same for the same arguments: random vectors, captions with quotes, a tab and
    non-ASCII text."""
    rng = np.random.default_rng(first_id)

    def vec() -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=n * dim).astype(np.float32)), dim)

    return pa.RecordBatch.from_arrays(
        [
            pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
            pa.array([f"https://x/{i}" for i in range(n)]),
            pa.array([f"caption '{i}'\t\"é\"" for i in range(n)]),
            pa.array(["UNLIKELY"] * n),
            pa.array(rng.random(n).astype(np.float32)),
            vec(),
            vec(),
        ],
        schema=batch_schema(dim),
    )
