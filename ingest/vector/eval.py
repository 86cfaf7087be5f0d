"""`eval` as a benchmark: recall@k against brute force, latency percentiles and QPS at concurrency 1 and N, over
a sweep of search list sizes, on query vectors sampled from the table itself (they are in the table: each
query's own row is among its exact neighbours, as it is for `search --like-id`).

With no sweep given, the search list recorded when the index was tuned is used (else the server default).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import orjson

from ingest.clickhouse.index_sql import ids_search_sql
from ingest.clickhouse.vector_sql import (
    DEFAULT_METRIC,
    EF_SEARCH_SETTING,
    ExistingIndex,
    current_setting_sql,
    recall_at_k,
    sample_queries_sql,
    search_settings,
    vector_literal,
)
from ingest.core.config import QueryConfig
from ingest.core.errors import UsageError
from ingest.sinks.base import Sink
from ingest.vector.index import connected_sink, index_table, index_used, require_table, require_vector_index
from ingest.vector.metadata import recorded_for
from ingest.vector.search import column_index

if TYPE_CHECKING:
    from ingest.sinks.cluster import ClusterSink
    from ingest.vector.cluster import ClusterRoute

Route = Literal["auto", "distributed", "shards"]
"""On a cluster: read the route from the plans, or force one (to measure both)."""


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """One search list size: recall@k for each k, latency percentiles (concurrency 1) and QPS."""

    search_list: int
    recall: dict[int, float]
    p50_ms: float
    p95_ms: float
    p99_ms: float
    qps_1: float
    qps_n: float

    def as_dict(self) -> dict[str, Any]:
        return {
            EF_SEARCH_SETTING: self.search_list,
            **{f"recall_at_{k}": r for k, r in self.recall.items()},
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "qps_concurrency_1": self.qps_1,
            "qps_concurrency_n": self.qps_n,
        }


@dataclass(frozen=True, slots=True)
class EvalResult:
    ks: tuple[int, ...]
    queries: int
    index: str
    index_used: bool
    concurrency: int
    brute_force_p50_ms: float
    points: tuple[SweepPoint, ...]
    list_source: str
    """Where the search list came from: the sweep asked for, the recorded tuning, or the server default."""
    route: str | None = None
    """On a cluster: `distributed` or `shards` (fan-out, top-k merged here), read from the plans (or forced)."""
    shards: tuple[dict[str, Any], ...] = ()
    brute_force_p99_ms: float = 0.0

    def lines(self) -> list[str]:
        used = "" if self.index_used else " (warning: the plan did not use the index)"
        first = self.points[0]
        out = [f"recall@{k}: {first.recall[k]:.3f}" for k in self.ks]
        out.append(
            f"{self.queries} queries sampled from the table; index {self.index}{used}, "
            f"{EF_SEARCH_SETTING}={first.search_list} ({self.list_source})"
        )
        out.append(f"median latency: index {first.p50_ms:.1f} ms, brute force {self.brute_force_p50_ms:.1f} ms")
        if self.route is not None:
            used = ", ".join(f"shard {u['shard']} {u['index'] or 'no index'}" for u in self.shards)
            out.append(f"cluster route: {self.route} ({used}); brute force through the Distributed table")
        return out

    def to_json(self) -> bytes:
        first = self.points[0]
        return orjson.dumps(
            {
                **{f"recall_at_{k}": first.recall[k] for k in self.ks},
                "k": list(self.ks),
                "queries": self.queries,
                "index": self.index,
                "index_used": self.index_used,
                EF_SEARCH_SETTING: first.search_list,
                "search_list_source": self.list_source,
                "index_median_ms": first.p50_ms,
                "brute_force_median_ms": self.brute_force_p50_ms,
                "brute_force_p99_ms": self.brute_force_p99_ms,
                "concurrency": self.concurrency,
                "sweep": [p.as_dict() for p in self.points],
                **({"route": self.route, "shards": list(self.shards)} if self.route is not None else {}),
            }
        )


def percentile_ms(seconds: list[float], pct: float) -> float:
    return float(np.percentile(np.asarray(seconds), pct)) * 1000.0 if seconds else 0.0


async def _ids(sink: Sink, sql: str, settings: dict[str, str | int]) -> tuple[list[int], float]:
    start = time.perf_counter()
    rows = await sink.query(sql, settings)
    return [int(r["id"]) for r in rows], time.perf_counter() - start


async def _with(
    approx: Callable[[int, dict[str, str | int]], Awaitable[object]], opts: dict[str, str | int], i: int
) -> object:
    return await approx(i, opts)


async def _qps(search: Callable[[int], Awaitable[object]], count: int, concurrency: int) -> float:
    """Queries per second with `concurrency` requests in flight (chdb runs them one at a time on its thread)."""
    pending = list(range(count))

    async def worker() -> None:
        while pending:
            await search(pending.pop())

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return count / max(time.perf_counter() - start, 1e-9)


async def run_eval(
    q: QueryConfig,
    column: str,
    queries: int,
    ks: tuple[int, ...],
    sweep: tuple[int, ...],
    seed: int,
    concurrency: int = 4,
    route: Route = "auto",
) -> EvalResult:
    """Top-max(k) through the index at each search list size against brute force (use_skip_indexes = 0)."""
    ref = q.table
    ks = tuple(sorted(set(ks)))
    top = max(ks)
    async with connected_sink(q) as sink:
        require_vector_index(sink, q)
        await require_table(sink, q)
        index = await column_index(sink, index_table(q), column)
        if index is None:
            raise UsageError(
                f"no vector index on {column} in {ref.key}: build one first with `laion-ingest index --column {column}`"
            )
        metric = index.metric or DEFAULT_METRIC
        lists, source, extras = await _lists(sink, q, sweep, index)
        samples = await sink.query(sample_queries_sql(ref, column, queries, seed))
        if not samples:
            raise UsageError(f"table {ref.key} is empty: nothing to evaluate")
        literals = [vector_literal(np.asarray(r["v"], dtype=np.float32)) for r in samples]
        sqls = [ids_search_sql(ref, column, metric, lit, top) for lit in literals]
        cluster: ClusterSink | None = None
        if q.target.cluster is not None:
            from ingest.vector import cluster as on_cluster  # (it needs aiohttp: imported for clusters only)

            cluster = on_cluster.as_cluster(sink)
        local_sqls = [ids_search_sql(index_table(q), column, metric, lit, top) for lit in literals]
        routes: dict[int, ClusterRoute] = {}

        async def approx(i: int, opts: dict[str, str | int]) -> tuple[list[int], float]:
            if cluster is None:
                return await _ids(sink, sqls[i], opts)
            # a cluster: the route (Distributed or per-shard fan-out) is read from the plans once per search list
            size = int(opts.get(EF_SEARCH_SETTING, 0))
            if size not in routes:
                search = on_cluster.KnnSearch(ref, column, metric, literals[i], top, opts)
                routes[size] = await on_cluster.plan_route(cluster, search, route)
            rows, secs = await on_cluster.run_route(cluster, routes[size], (sqls[i], local_sqls[i]), opts, top)
            return [int(r["id"]) for r in rows], secs

        first_opts = {**search_settings(False, lists[0]), **extras}
        if cluster is None:
            used = await index_used(sink, sqls[0], first_opts)
        else:
            await approx(0, first_opts)
            used = routes[lists[0]].index
        exact = [await _ids(sink, s, search_settings(True, None)) for s in sqls]
        points = []
        for size in lists:
            opts = {**search_settings(False, size), **extras}
            got = [await approx(i, opts) for i in range(len(sqls))]
            recall = {
                k: float(np.mean([recall_at_k(a, e, k) for (a, _), (e, _) in zip(got, exact, strict=True)])) for k in ks
            }
            secs = [t for _, t in got]
            points.append(
                SweepPoint(
                    size,
                    recall,
                    percentile_ms(secs, 50),
                    percentile_ms(secs, 95),
                    percentile_ms(secs, 99),
                    len(secs) / max(sum(secs), 1e-9),
                    await _qps(functools.partial(_with, approx, opts), len(sqls), concurrency),
                )
            )
    return EvalResult(
        ks,
        len(samples),
        index.name,
        used == index.name,
        concurrency,
        percentile_ms([t for _, t in exact], 50),
        tuple(points),
        source,
        routes[lists[0]].route if routes else None,
        tuple(u.to_json() for u in routes[lists[0]].shards) if routes else (),
        percentile_ms([t for _, t in exact], 99),
    )


async def _lists(
    sink: Sink, q: QueryConfig, sweep: tuple[int, ...], index: ExistingIndex
) -> tuple[list[int], str, dict[str, int]]:
    """Search list sizes to measure, where they come from, and the other recorded settings (b1: rescoring)."""
    rec = await recorded_for(sink, q.table, index)
    extras = {k: v for k, v in rec.settings.items() if k != EF_SEARCH_SETTING} if rec is not None else {}
    if sweep:
        return list(sweep), "asked for", extras
    if rec is not None and EF_SEARCH_SETTING in rec.settings:
        return [rec.settings[EF_SEARCH_SETTING]], f"recorded when tuned to recall {rec.recall_target:.2f}", extras
    rows = await sink.query(current_setting_sql(EF_SEARCH_SETTING))
    return [int(rows[0]["value"]) if rows else 256], "server default", extras
