"""Recall of the vector index against brute force, on query vectors sampled from the table itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from ingest.clickhouse.vector_sql import (
    DEFAULT_METRIC,
    EF_SEARCH_SETTING,
    current_setting_sql,
    median_ms,
    recall_at_k,
    sample_queries_sql,
    search_settings,
    search_sql,
    vector_literal,
)
from ingest.core.config import QueryConfig
from ingest.core.errors import UsageError
from ingest.sinks.base import Sink
from ingest.vector.cluster import as_cluster, cluster_search, index_table
from ingest.vector.index import connected_sink, require_table, require_vector_index
from ingest.vector.search import column_index, index_used, timed_search


@dataclass(frozen=True, slots=True)
class EvalResult:
    k: int
    queries: int
    recall: float
    index_ms: float
    brute_force_ms: float
    index: str
    ef_search: str
    index_used: bool

    def lines(self) -> list[str]:
        used = "" if self.index_used else " (warning: the plan did not use the index)"
        return [
            f"recall@{self.k}: {self.recall:.3f}",
            f"{self.queries} queries sampled from the table; index {self.index}{used}, "
            f"{EF_SEARCH_SETTING}={self.ef_search}",
            f"median latency: index {self.index_ms:.1f} ms, brute force {self.brute_force_ms:.1f} ms",
        ]

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                f"recall_at_{self.k}": self.recall,
                "k": self.k,
                "queries": self.queries,
                "index": self.index,
                "index_used": self.index_used,
                EF_SEARCH_SETTING: self.ef_search,
                "index_median_ms": self.index_ms,
                "brute_force_median_ms": self.brute_force_ms,
            }
        )


async def run_eval(
    q: QueryConfig, column: str, queries: int, k: int, ef_search: int | None, seed: int
) -> EvalResult:
    """Top-k through the index against brute force (use_skip_indexes = 0) for rows sampled from the table."""
    ref = q.table
    async with connected_sink(q) as sink:
        require_vector_index(sink, q)
        await require_table(sink, q)
        index = await column_index(sink, index_table(q), column)
        if index is None:
            raise UsageError(
                f"no vector index on {column} in {ref.key}: build one first with `laion-ingest index --column {column}`"
            )
        metric = index.metric or DEFAULT_METRIC
        samples = await sink.query(sample_queries_sql(ref, column, queries, seed))
        if not samples:
            raise UsageError(f"table {ref.key} is empty: nothing to evaluate")
        approx_opts = search_settings(False, ef_search)
        exact_opts = search_settings(True, None)
        recalls: list[float] = []
        approx_s: list[float] = []
        exact_s: list[float] = []
        used: str | None = None
        for i, row in enumerate(samples):
            sql = search_sql(ref, column, metric, sql_vector(row), k)
            cluster = as_cluster(sink)
            if cluster is not None:  # the cluster's own route (vector/cluster.py); brute force via Distributed
                found = await cluster_search(cluster, ref, column, metric, sql_vector(row), k, approx_opts)
                approx, a_s = found.rows, found.elapsed
                used = found.index if i == 0 else used
            else:
                if i == 0:
                    used = await index_used(sink, sql, approx_opts)
                approx, a_s = await timed_search(sink, sql, approx_opts)
            exact, e_s = await timed_search(sink, sql, exact_opts)
            recalls.append(recall_at_k([int(r["id"]) for r in approx], [int(r["id"]) for r in exact], k))
            approx_s.append(a_s)
            exact_s.append(e_s)
        effective = str(ef_search) if ef_search is not None else await _setting(sink, EF_SEARCH_SETTING)
    return EvalResult(
        k=k,
        queries=len(samples),
        recall=float(np.mean(recalls)),
        index_ms=median_ms(approx_s),
        brute_force_ms=median_ms(exact_s),
        index=index.name,
        ef_search=effective,
        index_used=used == index.name,
    )


def sql_vector(row: dict[str, Any]) -> str:
    return vector_literal(np.asarray(row["v"], dtype=np.float32))


async def _setting(sink: Sink, name: str) -> str:
    rows = await sink.query(current_setting_sql(name))
    return str(rows[0]["value"]) if rows else "?"


