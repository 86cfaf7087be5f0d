"""Nearest rows to a text, image, row or vector, and whether the vector index answered.

Whether the index answered is read from `EXPLAIN indexes = 1` of the very same query and settings.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from ingest.clickhouse.vector_sql import (
    DEFAULT_METRIC,
    ExistingIndex,
    column_dim_sql,
    parse_vector_json,
    row_vector_sql,
    search_settings,
    search_sql,
    vector_literal,
)
from ingest.core.config import QueryConfig
from ingest.core.errors import UnsupportedFeatureError, UsageError
from ingest.core.ids import TableRef
from ingest.sinks.base import Sink
from ingest.vector.clip_client import encode
from ingest.vector.index import (
    connected_sink,
    index_table,
    index_used,
    require_table,
    require_vector_index,
    vector_indexes,
)
from ingest.vector.metadata import recorded_for

Column = Literal["image_embedding", "text_embedding"]


async def row_vector(sink: Sink, ref: TableRef, column: str, row_id: int) -> list[float]:
    rows = await sink.query(row_vector_sql(ref, column, row_id))
    if not rows:
        raise UsageError(f"--like-id {row_id}: no such row in {ref.key}")
    return [float(x) for x in rows[0]["v"]]


async def column_dim(sink: Sink, ref: TableRef, column: str) -> int:
    rows = await sink.query(column_dim_sql(ref, column))
    if not rows:
        raise UsageError(f"table {ref.key} is empty: nothing to search")
    return int(rows[0]["d"])


@dataclass(frozen=True, slots=True)
class Query:
    """Exactly one of the four ways to say what to look for."""

    text: str | None = None
    image: str | None = None
    like_id: int | None = None
    vector: str | None = None

    def kind(self) -> str:
        given = [k for k in ("text", "image", "like_id", "vector") if getattr(self, k) is not None]
        if len(given) != 1:
            raise UsageError("give exactly one of --text, --image, --like-id, --vector")
        return given[0]


@dataclass
class SearchResult:
    hits: list[dict[str, Any]]
    elapsed: float
    index_used: bool
    index: str | None
    column: str
    metric: str
    settings: dict[str, str | int] = field(default_factory=dict)
    shards: list[dict[str, Any]] = field(default_factory=list)
    """On a cluster: per shard, whether it used its index, and the route the query took."""

    def to_json(self) -> bytes:
        doc = {
            "hits": self.hits,
            "elapsed": round(self.elapsed, 6),
            "index_used": self.index_used,
            "index": self.index,
            "column": self.column,
            "metric": self.metric,
            "settings": self.settings,
        }
        if self.shards:
            doc["shards"] = self.shards
        return orjson.dumps(doc)


def index_on(indexes: list[ExistingIndex], column: str) -> ExistingIndex | None:
    return next((ix for ix in indexes if ix.is_vector and ix.column == column), None)


def require_distance(sink: Sink, q: QueryConfig) -> None:
    info = sink.info
    if not info.cosine_distance:
        raise UnsupportedFeatureError(
            f"ClickHouse {info.version} at {q.target.display()} has no cosineDistance: search needs "
            "ClickHouse >= 21.11 (>= 25.8 for the vector index), or the embedded chdb target"
        )


async def column_index(sink: Sink, ref: TableRef, column: str) -> ExistingIndex | None:
    """The vector index on `column`, on servers that have vector indexes at all."""
    if not sink.info.vector_index:
        return None
    return index_on(await vector_indexes(sink, ref), column)


async def timed_search(sink: Sink, sql: str, settings: dict[str, str | int]) -> tuple[list[dict[str, Any]], float]:
    start = time.perf_counter()
    rows = await sink.query(sql, settings)
    return rows, time.perf_counter() - start


async def run_search(
    q: QueryConfig,
    query: Query,
    column: str,
    limit: int,
    brute_force: bool,
    ef_search: int | None,
    weights: str | None,
) -> SearchResult:
    kind = query.kind()
    ref = q.table
    async with connected_sink(q) as sink:
        require_distance(sink, q)
        if ef_search is not None:
            require_vector_index(sink, q)
        await require_table(sink, q)
        dim = await column_dim(sink, ref, column)
        index = await column_index(sink, index_table(q), column)
        metric = (index.metric if index else None) or DEFAULT_METRIC
        if kind == "like_id":
            assert query.like_id is not None
            vector = await row_vector(sink, ref, column, query.like_id)
        elif kind == "vector":
            assert query.vector is not None
            vector = parse_vector_json(query.vector)
        else:
            value = query.text if kind == "text" else query.image
            assert value is not None
            vector = await encode("text" if kind == "text" else "image", value, weights)
        if len(vector) != dim:
            raise UsageError(f"the query vector has {len(vector)} values; {column} in {ref.key} holds {dim}")
        sql = search_sql(ref, column, metric, vector_literal(vector), limit)
        opts = search_settings(brute_force, ef_search)
        if ef_search is None and not brute_force and index is not None:
            rec = await recorded_for(sink, ref, index)  # the search list the index was tuned for
            opts.update(rec.settings if rec is not None else {})
        shards: list[dict[str, Any]] = []
        if q.target.cluster is not None:  # per-shard index use, fan-out where Distributed loses it
            from ingest.vector.cluster import KnnSearch, as_cluster, cluster_search  # (aiohttp: only for clusters)

            cluster = as_cluster(sink)
            assert cluster is not None
            found = await cluster_search(cluster, KnnSearch(ref, column, metric, vector_literal(vector), limit, opts))
            rows, elapsed, used = found.rows, found.elapsed, found.index
            shards = [{**u.to_json(), "route": found.route} for u in found.shards]
        else:
            rows, elapsed = await timed_search(sink, sql, opts)
            used = await index_used(sink, sql, opts)
    hits = [
        {
            "rank": rank,
            "id": int(r["id"]),
            "distance": float(r["distance"]),
            "url": str(r["url"]),
            "caption": str(r["caption"]),
        }
        for rank, r in enumerate(rows, 1)
    ]
    return SearchResult(hits, elapsed, used is not None, used, column, metric, opts, shards)
