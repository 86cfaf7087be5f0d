"""The full-index check: recall@10 of a built index on query rows of the whole table, from the tuned search
list doubling until it reaches the target, and the search settings to record for `search` and `eval`.

How a search is answered decides the recall: one server asks its table; a cluster asks the route `search` takes
(vector/cluster_index.py passes its own `Searcher`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

import numpy as np

from ingest.clickhouse.index_sql import ids_search_sql
from ingest.clickhouse.knn_sql import MAX_FETCH_MULTIPLIER
from ingest.clickhouse.vector_sql import (
    EF_SEARCH_SETTING,
    VectorIndex,
    sample_queries_sql,
    search_settings,
    vector_literal,
)
from ingest.core.config import TuneConfig
from ingest.core.ids import TableRef
from ingest.sinks.base import Sink
from ingest.vector.tune import PLATEAU, Candidate
from ingest.vector.tune_run import exact_top_ids, recalls_at_list

MAX_SEARCH_LIST = 4096
VERIFY_MARGIN = 0.02
"""The full-index check aims this far above the target, so that another sample of queries (an independent
`eval`) also clears it: per-query recall varies by cluster, and on 100k synthetic rows two samples of 100 query
rows differed by 0.018 (0.962 against 0.944) at the same search list."""


SCREEN_SHARE = 4
"""The check screens each search list with 1/SCREEN_SHARE of its query rows and confirms the list found with all
of them (the screened rows' answers are reused): on 100k rows the list doubled from 64 to 512, four rounds of
100 searches, where three of them only had to say "not yet"."""


Searcher = Callable[[Sequence[str], Sequence[list[int]], int, dict[str, int]], Awaitable[list[float]]]
"""Recall@10 of each query vector (literal) against its exact top-10 at a search list size and the candidate's
other search settings (rescoring, fetch multiplier): how a search is
answered decides it (one server: the table itself; a cluster: its route, vector/cluster_index.py)."""


async def verify_recall(
    sink: Sink,
    ref: TableRef,
    index: VectorIndex,
    start: Candidate,
    start_list: int,
    cfg: TuneConfig,
    searcher: Searcher | None = None,
) -> tuple[dict[str, int], float]:
    """Recall@10 of the built index on query rows from the full table, from the chosen search list doubling
    until it reaches the target (the sample's graph was smaller than the real one); a rescored candidate doubles
    its fetch multiplier with it. A share of the query rows finds the settings; all of them confirm them, and
    the doubling goes on if they fall short. Returns the search settings to record and their recall."""
    rows = await sink.query(sample_queries_sql(ref, index.column, cfg.verify_queries, cfg.seed + 1))
    literals = [vector_literal(np.asarray(r["v"], np.float32)) for r in rows]
    truth = await exact_top_ids(sink, ref, index.column, index.metric, literals, 10)
    goal = cfg.recall_target + VERIFY_MARGIN
    measured: dict[tuple[int, int, int], float] = {}  # (list, multiplier, query row) → recall: reused

    async def on_table(
        lits: Sequence[str], exact: Sequence[list[int]], size: int, extras: dict[str, int]
    ) -> list[float]:
        sqls = [ids_search_sql(ref, index.column, index.metric, lit, 10) for lit in lits]
        return await recalls_at_list(sink, sqls, exact, size, extras)

    recalls = searcher or on_table

    async def mean_recall(c: Candidate, size: int, queries: int) -> float:
        f = c.fetch_multiplier
        todo = [i for i in range(queries) if (size, f, i) not in measured]
        got = await recalls([literals[i] for i in todo], [truth[i] for i in todo], size, c.extras())
        measured.update(zip(((size, f, i) for i in todo), got, strict=True))
        return float(np.mean([measured[(size, f, i)] for i in range(queries)])) if queries else 1.0

    async def doubling(c: Candidate, size: int, queries: int) -> tuple[Candidate, int, float]:
        previous = -1.0
        while True:
            recall = await mean_recall(c, size, queries)
            if recall >= goal or size >= MAX_SEARCH_LIST or recall - previous < PLATEAU:
                return c, size, recall
            previous = recall
            size *= 2
            if c.fetch_multiplier:
                c = replace(c, fetch_multiplier=min(MAX_FETCH_MULTIPLIER, 2 * c.fetch_multiplier))

    screened, size, _ = await doubling(start, start_list, max(1, len(literals) // SCREEN_SHARE))
    final, size, recall = await doubling(screened, size, len(literals))
    return {EF_SEARCH_SETTING: size} | final.extras(), recall


def short_of_goal(index: VectorIndex, recall: float, cfg: TuneConfig) -> str | None:
    """What to tell the user when the largest search list left the check under the margin it aims for: the
    sample's graphs were sparser than the table's (at 4M rows in graphs of 250k, the sample's search list 256
    became 4096 and read 0.964, and an independent eval 0.948), so another sample of queries may read under the
    target. The structure, not the search, is the limit then."""
    goal = cfg.recall_target + VERIFY_MARGIN
    if recall >= goal:
        return None
    return (
        f"{index.name}: recall@10 {recall:.3f} at the largest useful search list is under the {goal:.2f} the "
        f"check aims for (target {cfg.recall_target:g} + {VERIFY_MARGIN:g}): another sample of queries may read "
        f"under the target; a costlier structure reaches it (e.g. --m {2 * index.m} --ef-construction "
        f"{2 * index.ef_construction})"
    )


async def load_graphs(sink: Sink, ref: TableRef, index: VectorIndex, seed: int) -> None:
    """One indexed search from a table row, so that ClickHouse loads every graph of the index and its memory can
    be measured: a build with given parameters has no check whose searches would load it."""
    rows = await sink.query(sample_queries_sql(ref, index.column, 1, seed))
    if rows:
        sql = ids_search_sql(ref, index.column, index.metric, vector_literal(np.asarray(rows[0]["v"], np.float32)), 10)
        await sink.query(sql, search_settings(False, None))
