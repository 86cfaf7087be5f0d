"""Measure the tuning grid on a sample of the table (the choosing is pure, in vector/tune.py).

Once: copy a seeded sample of rows into a scratch MergeTree table with one INSERT (one part), take a fixed set
of query rows that are *not* in the sample, and get their exact top-10 by brute force (`use_skip_indexes = 0`).
Then per candidate: ADD INDEX, MATERIALIZE INDEX (mutations_sync = 2, timed), query at each search list size up
to the first that reaches the target, DROP INDEX. The scratch table is dropped at the end, whatever happens.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from ingest.clickhouse.index_sql import (
    RESCORING_SETTING,
    create_scratch_sql,
    drop_table_sql,
    exact_top_ids_sql,
    fill_scratch_sql,
    ids_search_sql,
    index_bytes_sql,
    query_setting_exists_sql,
    scratch_ref,
    tune_queries_sql,
)
from ingest.clickhouse.vector_sql import (
    VectorIndex,
    add_index_sql,
    drop_index_sql,
    materialize_index_sql,
    recall_at_k,
    search_settings,
    vector_literal,
)
from ingest.core.config import TuneConfig
from ingest.core.errors import TargetError, UsageError
from ingest.core.ids import TableRef
from ingest.sinks.base import Sink
from ingest.vector.graphs import Layout, plan_sample
from ingest.vector.tune import (
    Candidate,
    Measured,
    TuneReport,
    choose,
    chunks_under,
    default_grid,
    query_extras,
    should_stop,
)

log = logging.getLogger(__name__)
K = 10
SCRATCH_INDEX = "tune_index"


QUERY_TEXT_BUDGET = 200_000
"""Characters of vector literals per brute-force scan: ClickHouse parses at most max_query_size (256 KiB)."""


async def exact_top_ids(
    sink: Sink, ref: TableRef, column: str, metric: str, literals: Sequence[str], k: int
) -> list[list[int]]:
    """Exact top-k ids of each query vector, a few queries per scan of the column."""
    out: list[list[int]] = [[] for _ in literals]
    for group in chunks_under(literals, QUERY_TEXT_BUDGET):
        sql = exact_top_ids_sql(ref, column, metric, [literals[i] for i in group], k)
        for row in await sink.query(sql):
            out[group[int(row["qi"]) - 1]] = [int(pair[1]) for pair in row["top"]]
    return out


async def _top_ids(sink: Sink, sql: str, settings: dict[str, str | int]) -> list[int]:
    return [int(r["id"]) for r in await sink.query(sql, settings)]


async def recalls_at_list(
    sink: Sink, searches: Sequence[str], truth: Sequence[list[int]], size: int, quantization: str
) -> list[float]:
    """Recall@10 of each of `searches` (ORDER BY distance LIMIT 10) at search list `size` against its exact
    top-10; the sample's grid and the full index's check both measure with it."""
    opts = {**search_settings(False, size), **query_extras(quantization)}
    return [recall_at_k(await _top_ids(sink, q, opts), t, K) for q, t in zip(searches, truth, strict=True)]


async def recall_at_list(
    sink: Sink, searches: Sequence[str], truth: Sequence[list[int]], size: int, quantization: str
) -> float:
    """The mean of `recalls_at_list` (1.0 for no searches)."""
    got = await recalls_at_list(sink, searches, truth, size, quantization)
    return float(np.mean(got)) if got else 1.0


async def measure_candidate(
    sink: Sink,
    scratch: TableRef,
    dim: int,
    metric: str,
    cand: Candidate,
    queries: Sequence[str],
    truth: Sequence[list[int]],
    lists: Sequence[int],
    target: float,
    granules: int | None = None,
) -> Measured:
    """Build one candidate on the scratch table (graphs of `granules` granules; None: one) and measure recall@10
    at each search list, smallest first; the sweep stops at the first list that reaches `target` (the choice
    needs no larger one; the grid shows '-')."""
    index = VectorIndex(SCRATCH_INDEX, "v", dim, metric, cand.quantization, cand.m, cand.ef_construction, granules)
    await sink.execute(drop_index_sql(scratch, SCRATCH_INDEX))
    await sink.execute(add_index_sql(scratch, index))
    try:
        start = time.perf_counter()
        await sink.execute(materialize_index_sql(scratch, SCRATCH_INDEX), {"mutations_sync": 2})
        seconds = time.perf_counter() - start
        recall: dict[int, float] = {}
        for size in lists:
            recall[size] = await recall_at_list(sink, queries, truth, size, cand.quantization)
            if recall[size] >= target:
                break
        rows = await sink.query(index_bytes_sql(scratch, SCRATCH_INDEX))
        size_bytes = int(rows[0]["b"]) if rows else 0
    finally:
        await sink.execute(drop_index_sql(scratch, SCRATCH_INDEX))
    return Measured(cand, seconds, recall, size_bytes)


async def tune(
    sink: Sink,
    ref: TableRef,
    column: str,
    rows: int,
    dim: int,
    metric: str,
    cfg: TuneConfig,
    report: Callable[[str], None],
    layout: Layout,
) -> TuneReport:
    """Sample, measure the grid (stopping early), choose. Needs enough rows for a sample and its queries. The
    scratch table is built in graphs of the size `layout` will build (graphs.plan_sample)."""
    queries_n = min(cfg.queries, max(1, rows // 10))
    planned = plan_sample(layout.graph, cfg.sample_rows, rows - queries_n)
    sample, graph = planned.rows, planned.graph
    if sample < 2 * K:
        raise UsageError(f"table {ref.key} has {rows} rows: too few to tune an index (give --m/--ef-construction)")
    scratch = scratch_ref(ref)
    lists = tuple(sorted(cfg.search_lists))
    quants = cfg.quantizations
    notes: list[str] = []
    if "b1" in quants and not int((await sink.query(query_setting_exists_sql(RESCORING_SETTING)))[0]["n"]):
        quants = tuple(q for q in quants if q != "b1")
        notes.append(f"b1 left out: ClickHouse {sink.info.version} has no {RESCORING_SETTING} (25.8+)")
    if not quants:
        raise UsageError("no quantization left to tune: this server cannot rescore b1; give --quantization bf16 or i8")
    notes.extend([planned.note] if planned.note else [])
    grid = default_grid(quants, cfg.ms, cfg.efs)
    started = time.perf_counter()
    await sink.execute(drop_table_sql(scratch))
    await sink.execute(create_scratch_sql(scratch, graph.rows_per_granule if graph else None))
    measured: list[Measured] = []
    try:
        await sink.execute(fill_scratch_sql(scratch, ref, column, rows, sample, queries_n, cfg.seed))
        qrows = await sink.query(tune_queries_sql(ref, column, rows, sample, queries_n, cfg.seed))
        literals = [vector_literal(np.asarray(r["v"], dtype=np.float32)) for r in qrows]
        queries = [ids_search_sql(scratch, "v", metric, lit, K) for lit in literals]
        truth = await exact_top_ids(sink, scratch, "v", metric, literals, K)
        report(
            f"{column}: sampled {sample:,} of {rows:,} rows and {len(queries)} query rows with their exact "
            f"neighbours in {time.perf_counter() - started:.1f} s; measuring the grid"
        )
        for i, cand in enumerate(grid):
            m = await measure_candidate(
                sink,
                scratch,
                dim,
                metric,
                cand,
                queries,
                truth,
                lists,
                cfg.recall_target,
                graph.granules if graph else None,
            )
            measured.append(m)
            log.debug("%s: build %.1f s, recall %s", cand.label(), m.build_seconds, m.recall)
            if should_stop(m, cfg.recall_target):
                skipped = tuple(grid[i + 1 :])
                break
        else:
            skipped = ()
    finally:
        with contextlib.suppress(TargetError):
            await sink.execute(drop_table_sql(scratch))
    if skipped:
        notes.append(f"stopped early: {len(skipped)} costlier candidate(s) not built")
    notes.append(f"tuning took {time.perf_counter() - started:.1f} s in all")
    return TuneReport(
        column,
        rows,
        dim,
        sample,
        len(queries),
        cfg.recall_target,
        lists,
        tuple(measured),
        choose(measured, cfg.recall_target),
        layout,
        skipped,
        tuple(notes),
        graph.rows if graph else None,
    )
