"""The search settings an index was tuned for, recorded next to the table so `search` and `eval` use them.

ClickHouse has no per-index settings we could store a search list size in, and a table comment belongs to the
user: we keep a small ReplacingMergeTree of ours (`_laion_ingest_index_meta`) in the table's database, one row
per (table, index), and trust a record only while the index still has the definition it was recorded for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from ingest.clickhouse.index_sql import create_meta_sql, insert_meta_sql, meta_exists_sql, select_meta_sql
from ingest.clickhouse.vector_sql import ExistingIndex
from ingest.core.ids import TableRef
from ingest.sinks.base import Sink


@dataclass(frozen=True, slots=True)
class Recorded:
    settings: dict[str, int]
    recall_target: float
    recall: float


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


async def record(
    sink: Sink, ref: TableRef, index: str, type_full: str, settings: dict[str, int], target: float, recall: float
) -> None:
    await sink.execute(create_meta_sql(ref))
    await sink.execute(insert_meta_sql(ref, index, type_full, orjson.dumps(settings).decode(), target, recall))


async def recorded_for(sink: Sink, ref: TableRef, index: ExistingIndex) -> Recorded | None:
    """The record of this index, if one exists and matches its current definition."""
    exists = await sink.query(meta_exists_sql(ref))
    if not exists or int(exists[0]["n"]) == 0:
        return None
    rows = await sink.query(select_meta_sql(ref, index.name))
    if not rows or _squash(str(rows[0]["type_full"])) != _squash(index.type_full):
        return None
    settings = {str(k): int(v) for k, v in orjson.loads(str(rows[0]["search_settings"])).items()}
    return Recorded(settings, float(rows[0]["recall_target"]), float(rows[0]["recall"]))
