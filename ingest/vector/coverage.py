"""Keeping a growing table's vector indexes built once per part (the daemon's `--index-every`).

With `materialize_skip_indexes_on_merge = 0` (MergeTree, 25.1+) a merge drops the vector index of the parts it
merges instead of rebuilding their graph on the spot, and our inserts send `materialize_skip_indexes_on_insert = 0`
so new parts land without it: the load stays fast, and a scheduled `MATERIALIZE INDEX` builds each uncovered part's
graph once. Parts not yet covered are counted from `system.parts` (a part with no skip index has 0 bytes of
them). On a cluster all of it happens on each shard's `{table}_local`, where the parts and indexes are. Where
a server lacks the settings, we say so and leave its defaults (merges then rebuild the index).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ingest.clickhouse.index_sql import (
    SKIP_ON_MERGE,
    merge_tree_setting_sql,
    modify_setting_sql,
    parts_summary_sql,
)
from ingest.core.ids import TableRef
from ingest.sinks.base import Sink
from ingest.vector.cluster import table_homes
from ingest.vector.index import materialize, vector_indexes

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Coverage:
    parts: int
    rows: int
    uncovered_parts: int
    uncovered_rows: int


async def _one_coverage(sink: Sink, ref: TableRef) -> Coverage:
    row = (await sink.query(parts_summary_sql(ref)))[0]
    parts, rows = int(row["parts"] or 0), int(row["total_rows"] or 0)
    if not any(ix.is_vector for ix in await vector_indexes(sink, ref)):
        return Coverage(parts, rows, 0, 0)
    return Coverage(parts, rows, int(row["uncovered_parts"] or 0), int(row["uncovered_rows"] or 0))


async def coverage(sink: Sink, ref: TableRef) -> Coverage:
    """Active parts and rows, and those no vector index covers yet (none, while the table has no vector index);
    on a cluster, summed over the shards' local tables."""
    each = [await _one_coverage(s, r) for s, r in table_homes(sink, ref)]
    return Coverage(*(sum(getattr(c, f) for c in each) for f in ("parts", "rows", "uncovered_parts", "uncovered_rows")))


async def prepare_growing_table(sink: Sink, ref: TableRef) -> list[str]:
    """Stop merges from rebuilding vector indexes (our inserts already skip them); notes on what is missing."""
    if not await sink.query(merge_tree_setting_sql(SKIP_ON_MERGE)):
        return [f"ClickHouse {sink.info.version} has no {SKIP_ON_MERGE} (25.1+): every merge rebuilds the vector index"]
    for home, table in table_homes(sink, ref):
        await home.execute(modify_setting_sql(table, SKIP_ON_MERGE, 0))
    return []


async def rematerialize(sink: Sink, ref: TableRef) -> tuple[int, int]:
    """Build every vector index on the parts that lack it (on every shard of a cluster); (parts, rows) that were
    uncovered before."""
    parts = rows = 0
    for home, table in table_homes(sink, ref):
        names = [ix.name for ix in await vector_indexes(home, table) if ix.is_vector]
        before = await _one_coverage(home, table)
        if not names or before.uncovered_parts == 0:
            continue
        for name in names:
            await materialize(home, table, name)
        parts, rows = parts + before.uncovered_parts, rows + before.uncovered_rows
    return parts, rows
