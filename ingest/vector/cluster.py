"""Search on a cluster: the vector index lives on each shard's `{table}_local`, queries go through `{table}`.

ClickHouse uses a vector index on local tables but not always through `Distributed` (#98907, #106397). So the
route is read from plans, not assumed: `EXPLAIN distributed = 1, indexes = 1` of the query through Distributed
lists every shard's own read and the index it uses. Through Distributed when every shard's read uses the index
(or for brute force); otherwise each shard's local table is queried (its plan, from its own EXPLAIN, says whether
it used its index) and the top-k are merged here.

Building the index per shard is vector/cluster_index.py's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ingest.clickhouse import cluster_sql as csql
from ingest.clickhouse.index_sql import ids_search_sql
from ingest.clickhouse.vector_sql import search_sql
from ingest.core.errors import TargetError
from ingest.core.ids import TableRef
from ingest.sinks.base import Sink
from ingest.sinks.cluster import ClusterSink, all_of
from ingest.vector.index import index_used

Route = Literal["auto", "distributed", "shards"]


def as_cluster(sink: Sink) -> ClusterSink | None:
    return sink if isinstance(sink, ClusterSink) else None


def table_homes(sink: Sink, ref: TableRef) -> list[tuple[Sink, TableRef]]:
    """Where a table's parts and vector indexes live: the table itself on one server; on a cluster its
    `{table}_local` on every node an ALTER runs on (one replica per shard when replicated, else every node)."""
    cluster = as_cluster(sink)
    if cluster is None:
        return [(sink, ref)]
    local = csql.local_ref(ref)
    return [(s, local) for s in cluster.mutation_sinks()]


@dataclass(frozen=True, slots=True)
class ShardUse:
    shard: int
    index: str | None

    def to_json(self) -> dict[str, Any]:
        return {"shard": self.shard, "index_used": self.index is not None, "index": self.index}


@dataclass(frozen=True, slots=True)
class ClusterRoute:
    """How one query (with its settings) is answered on a cluster, from the plans."""

    route: str
    """`distributed` or `shards` (each shard's local table queried, top-k merged here)."""
    shards: list[ShardUse]

    @property
    def index(self) -> str | None:
        """The index every shard used, or None if any shard searched by brute force."""
        names = [u.index for u in self.shards]
        return names[0] if names and all(names) else None


@dataclass(frozen=True, slots=True)
class ClusterHits:
    rows: list[dict[str, Any]]
    elapsed: float
    index: str | None
    """The index every shard used, or None if any shard searched by brute force."""
    shards: list[ShardUse]
    route: str


def merge_top_k(per_shard: Sequence[Sequence[dict[str, Any]]], k: int) -> list[dict[str, Any]]:
    """The k nearest over all shards' own top-k lists, by distance then id (stable across runs)."""
    merged = [row for rows in per_shard for row in rows]
    merged.sort(key=lambda r: (float(r["distance"]), int(r["id"])))
    return merged[:k]


def choose_route(distributed_reads: Sequence[str | None], shard_indexes: Sequence[str | None], brute: bool) -> str:
    """Through Distributed when its plan has every shard's read using the index (or nobody should use one);
    else shard by shard. `distributed_reads`: the index of each read in the Distributed plan (empty: unknown)."""
    if brute:
        return "distributed"
    if len(distributed_reads) >= len(shard_indexes) and distributed_reads and all(distributed_reads):
        return "distributed"
    return "shards" if any(shard_indexes) else "distributed"


async def _distributed_reads(sink: ClusterSink, sql: str, settings: dict[str, str | int]) -> list[str | None]:
    """Per shard read of the query through Distributed, its index; [] where the server cannot EXPLAIN it so."""
    try:
        plan = await sink.query(csql.explain_distributed_sql(sql), settings)
    except TargetError as exc:
        if exc.retriable:
            raise
        return []
    return csql.explain_reads("\n".join(str(r.get("explain", "")) for r in plan))


@dataclass(frozen=True, slots=True)
class KnnSearch:
    """One nearest-neighbour search on a cluster: which table and column, by what distance, for which vector
    (a SQL literal), how many rows, with which settings."""

    ref: TableRef
    column: str
    metric: str
    literal: str
    limit: int
    settings: dict[str, str | int]
    ids_only: bool = False
    """Answer ids and distances only (recall checks), not the url and caption a user reads."""

    def sql(self, ref: TableRef) -> str:
        shape = ids_search_sql if self.ids_only else search_sql
        return shape(ref, self.column, self.metric, self.literal, self.limit)

    def sqls(self) -> tuple[str, str]:
        """(through Distributed, on a shard's local table)."""
        return self.sql(self.ref), self.sql(csql.local_ref(self.ref))


async def plan_route(sink: ClusterSink, s: KnnSearch, force: Route = "auto") -> ClusterRoute:
    """The route of this search and which shards use their index (from EXPLAINs; no search runs)."""
    shards = sink.shard_sinks()
    brute = bool(s.settings.get("use_skip_indexes") == 0) or not sink.info.vector_index
    if brute:
        return ClusterRoute("distributed", [ShardUse(pos + 1, None) for pos in range(len(shards))])
    dist_sql, local_sql = s.sqls()
    reads = await _distributed_reads(sink, dist_sql, s.settings) if force != "shards" else []
    if force != "shards" and len(reads) >= len(shards) and all(reads):
        return ClusterRoute("distributed", [ShardUse(pos + 1, reads[pos]) for pos in range(len(shards))])
    used = await all_of([index_used(shard, local_sql, s.settings) for shard in shards])
    route = force if force != "auto" else choose_route(reads, used, brute)
    return ClusterRoute(route, [ShardUse(pos + 1, name) for pos, name in enumerate(used)])


async def run_route(
    sink: ClusterSink,
    route: ClusterRoute,
    sql_for: tuple[str, str],
    settings: dict[str, str | int],
    limit: int,
) -> tuple[list[dict[str, Any]], float]:
    """Run one search by its route: (rows, seconds). `sql_for` = (through Distributed, on a shard's local table)."""
    start = time.perf_counter()
    if route.route == "distributed":
        rows = await sink.query(sql_for[0], settings)
    else:
        rows = merge_top_k(await all_of([s.query(sql_for[1], settings) for s in sink.shard_sinks()]), limit)
    return rows, time.perf_counter() - start


async def cluster_search(sink: ClusterSink, s: KnnSearch, force: Route = "auto") -> ClusterHits:
    """Top-`limit` rows over the whole cluster, and which shards used their index."""
    route = await plan_route(sink, s, force)
    rows, elapsed = await run_route(sink, route, s.sqls(), s.settings, s.limit)
    return ClusterHits(rows, elapsed, route.index, route.shards, route.route)
