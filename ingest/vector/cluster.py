"""Index, search and eval on a cluster: the index lives on `{table}_local`, queries go through `{table}`.

- Index: `ADD INDEX` once through the DDL queue (`ON CLUSTER`, when every node is up) or on each node that owns an
  ALTER (one replica per shard when replicated: the ALTER replicates; every node otherwise); `MATERIALIZE INDEX`
  the same way, then every such node's `system.mutations` / `system.parts` are polled and the rows summed into
  one progress display.
- Search: ClickHouse uses a vector index on local tables but not always through `Distributed` (#98907, #106397).
  Each shard's plan of the query on its local table says whether that shard uses its index (EXPLAIN); the
  Distributed plan says whether the query through it does. Through Distributed when it and every shard use the
  index (or for brute force); otherwise the query goes to each shard's local table and the top-k are merged here.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ingest.clickhouse import cluster_sql as csql
from ingest.clickhouse.sql import count_sql
from ingest.clickhouse.vector_sql import (
    VectorIndex,
    add_index_sql,
    is_materialize_of,
    materialize_index_sql,
    search_sql,
)
from ingest.core.config import QueryConfig
from ingest.core.ids import TableRef
from ingest.sinks.base import Sink
from ingest.sinks.cluster import ClusterSink, all_of
from ingest.sinks.http import HttpSink
from ingest.vector.index import (
    BuildDisplay,
    DisplayFactory,
    IndexOutcome,
    IndexRequest,
    index_used,
    plan_index,
)

POLL_SECONDS = 0.5


def as_cluster(sink: Sink) -> ClusterSink | None:
    return sink if isinstance(sink, ClusterSink) else None


# ---- index ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterAlter:
    """An index step on `{table}_local`: `add` (no ON CLUSTER in it), then an optional mutation `materialize`,
    recognised in `system.mutations.command` by `is_ours`."""

    add: str | None
    materialize: str | None
    is_ours: Callable[[str], bool]


def index_alter(local: TableRef, index: VectorIndex, existed: bool) -> ClusterAlter:
    """ADD INDEX (unless it exists) and MATERIALIZE INDEX of one vector index, as vector_sql spells them."""
    return ClusterAlter(
        add=None if existed else add_index_sql(local, index),
        materialize=materialize_index_sql(local, index.name),
        is_ours=lambda command: is_materialize_of(command, index.name),
    )


async def _mutation_ids(sink: HttpSink, local: TableRef) -> set[str]:
    return {str(r["mutation_id"]) for r in await sink.query(csql.mutation_status_sql(local))}


async def _parts(sink: HttpSink, local: TableRef) -> tuple[int, int]:
    row = (await sink.query(csql.active_parts_sql(local)))[0]
    return int(row["parts"]), int(row["rows"] or 0)


async def alter_on_cluster(
    sink: ClusterSink, local: TableRef, step: ClusterAlter, display_for: Callable[[int], BuildDisplay]
) -> None:
    """Run one index step on every shard and watch it to the end; progress is the sum over the nodes."""
    owners = sink.mutation_sinks()
    if step.add is not None:
        if sink.on_cluster and sink.all_up:
            await sink.entry.execute(csql.alter_on_cluster_sql(step.add, local, sink.cluster))
        else:
            await all_of([s.execute(step.add) for s in owners])
    if step.materialize is None:
        return
    before = await all_of([_mutation_ids(s, local) for s in owners])
    sizes = await all_of([_parts(s, local) for s in owners])
    total = sum(rows for _parts_n, rows in sizes)
    materialize = step.materialize
    await all_of([s.execute(materialize) for s in owners])
    display = display_for(total)
    try:
        while True:
            states = await all_of([s.query(csql.mutation_status_sql(local)) for s in owners])
            done, finished = 0, True
            for rows_seen, (parts, rows), old in zip(states, sizes, before, strict=True):
                ours = [r for r in rows_seen if str(r["mutation_id"]) not in old and step.is_ours(str(r["command"]))]
                todo = sum(int(r["parts_to_do"]) for r in ours if not int(r["is_done"]))
                finished = finished and todo == 0
                done += csql.node_rows_done(rows, parts, todo)
            display.update(min(done, total), total)
            if finished:
                return
            await asyncio.sleep(POLL_SECONDS)
    finally:
        display.close()


async def build_on_cluster(
    sink: ClusterSink,
    q: QueryConfig,
    requests: list[IndexRequest],
    display_for: DisplayFactory,
    report: Callable[[str], None],
) -> list[IndexOutcome]:
    """vector/index.py's build_indexes on a cluster: planned against one shard's local table (every shard has the
    same definition), rows counted through the Distributed table, each index added and materialized on all shards.
    """
    local = csql.local_ref(q.table)
    probe = sink.shard_sinks()[0]
    plans = [await plan_index(probe, local, req) for req in requests]
    rows = int((await sink.query(count_sql(q.table)))[0]["n"])
    outcomes = []
    for index, existed, _local_rows in plans:
        start = time.monotonic()
        display = functools.partial(display_for, index.name)
        await alter_on_cluster(sink, local, index_alter(local, index, existed), display)
        outcome = IndexOutcome(index, existed, rows, time.monotonic() - start)
        report(outcome.line())
        outcomes.append(outcome)
    return outcomes


# ---- search --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShardUse:
    shard: int
    index: str | None

    def to_json(self) -> dict[str, Any]:
        return {"shard": self.shard, "index_used": self.index is not None, "index": self.index}


@dataclass(frozen=True, slots=True)
class ClusterHits:
    rows: list[dict[str, Any]]
    elapsed: float
    index: str | None
    """The index every shard used, or None if any shard searched by brute force."""
    shards: list[ShardUse]
    route: str
    """`distributed` or `shards` (each shard's local table queried, top-k merged here)."""


def merge_top_k(per_shard: Sequence[Sequence[dict[str, Any]]], k: int) -> list[dict[str, Any]]:
    """The k nearest over all shards' own top-k lists, by distance then id (stable across runs)."""
    merged = [row for rows in per_shard for row in rows]
    merged.sort(key=lambda r: (float(r["distance"]), int(r["id"])))
    return merged[:k]


def choose_route(distributed_index: str | None, shard_indexes: Sequence[str | None], brute_force: bool) -> str:
    """Through Distributed when it and every shard use the index (or nobody should); else shard by shard."""
    if brute_force or not any(shard_indexes):
        return "distributed"
    if distributed_index is not None and all(shard_indexes):
        return "distributed"
    return "shards"


async def cluster_search(
    sink: ClusterSink,
    ref: TableRef,
    column: str,
    metric: str,
    literal: str,
    limit: int,
    settings: dict[str, str | int],
) -> ClusterHits:
    """Top-`limit` rows over the whole cluster, and which shards used their index."""
    dist_sql = search_sql(ref, column, metric, literal, limit)
    local_sql = search_sql(csql.local_ref(ref), column, metric, literal, limit)
    brute = bool(settings.get("use_skip_indexes") == 0)
    shards = sink.shard_sinks()
    explains = sink.info.vector_index and not brute
    shard_idx: list[str | None] = (
        await all_of([index_used(s, local_sql, settings) for s in shards]) if explains else [None] * len(shards)
    )
    dist_idx = await index_used(sink, dist_sql, settings) if explains and any(shard_idx) else None
    route = choose_route(dist_idx, shard_idx, brute)
    start = time.perf_counter()
    if route == "distributed":
        rows = await sink.query(dist_sql, settings)
    else:
        rows = merge_top_k(await all_of([s.query(local_sql, settings) for s in shards]), limit)
    elapsed = time.perf_counter() - start
    uses = [ShardUse(pos + 1, name) for pos, name in enumerate(shard_idx)]
    used = shard_idx[0] if shard_idx and all(shard_idx) else None
    return ClusterHits(rows, elapsed, used, uses, route)
