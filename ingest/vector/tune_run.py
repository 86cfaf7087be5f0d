"""Measure the tuning grid on a sample of the table (the choosing is pure, in vector/tune.py).

Once: copy a seeded sample of rows into a scratch MergeTree table (merged into one part), take a fixed set
of query rows that are *not* in the sample, and get their exact top-10 by brute force (`use_skip_indexes = 0`).
Then per candidate: ADD INDEX, MATERIALIZE INDEX (mutations_sync = 2, timed), query at each search list size up
to the first that reaches the target, DROP INDEX. The scratch table is dropped at the end, whatever happens.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ingest.clickhouse.index_sql import (
    RESCORING_SETTING,
    create_scratch_sql,
    drop_table_sql,
    engine_cpu_sql,
    exact_top_ids_sql,
    fill_scratch_sql,
    ids_search_sql,
    index_bytes_sql,
    optimize_final_sql,
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
from ingest.core.errors import IndexTooLargeError, TargetError, UsageError
from ingest.core.ids import TableRef
from ingest.sinks.base import Sink
from ingest.vector.graphs import GraphSize, Layout, plan_sample
from ingest.vector.grid_stop import stops_after
from ingest.vector.sizing import FORMULA, UNBOUNDED, MemoryBudget, need, resident_bytes
from ingest.vector.tune import (
    LOSSY,
    PLATEAU,
    BuildTime,
    Candidate,
    Measured,
    TuneReport,
    by_memory,
    ceilinged,
    chunks_under,
    decide,
    default_grid,
    rescoring_wanted,
    searchable,
    variants,
)

log = logging.getLogger(__name__)
K = 10
SCRATCH_INDEX = "tune_index"


MIN_M_UNBUDGETED = 12
"""Without --max-memory the cheapest build wins, and M=8 builds cheapest but searches worst: on 100k noisy rows
bf16 M=8 ef_c=24 was chosen at search list 128 on the sample and needed 1024 on the full table (recall@10
0.976), where M=12 needed 256. M=8 is for saving memory: only under a budget."""

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
    sink: Sink, searches: Sequence[str], truth: Sequence[list[int]], size: int, extras: dict[str, int]
) -> list[float]:
    """Recall@10 of each of `searches` (ORDER BY distance LIMIT 10) at search list `size` with the candidate's
    other search settings (`extras`: rescoring, fetch multiplier) against its exact top-10; the sample's grid
    and the full index's check both measure with it."""
    opts = {**search_settings(False, size), **extras}
    return [recall_at_k(await _top_ids(sink, q, opts), t, K) for q, t in zip(searches, truth, strict=True)]


async def recall_at_list(
    sink: Sink, searches: Sequence[str], truth: Sequence[list[int]], size: int, extras: dict[str, int]
) -> float:
    """The mean of `recalls_at_list` (1.0 for no searches)."""
    got = await recalls_at_list(sink, searches, truth, size, extras)
    return float(np.mean(got)) if got else 1.0


async def sweep_lists(
    sink: Sink, queries: Sequence[str], truth: Sequence[list[int]], lists: Sequence[int], cand: Candidate, target: float
) -> tuple[dict[int, float], float]:
    """Recall@10 at each search list, smallest first, up to the first that reaches `target` (the choice needs
    no larger one; the grid shows '-') or the first whose doubling gained less than PLATEAU (a larger list would
    not either: on the noisy shape i8 read 0.85–0.87 at every list). Also the mean ms per search at the last."""
    recall: dict[int, float] = {}
    previous, ms = -1.0, 0.0
    for size in lists:
        start = time.perf_counter()
        recall[size] = await recall_at_list(sink, queries, truth, size, cand.extras())
        ms = 1000 * (time.perf_counter() - start) / max(len(queries), 1)
        if recall[size] >= target or recall[size] - previous < PLATEAU:
            break
        previous = recall[size]
    return recall, ms


async def engine_cpu(sink: Sink) -> float | None:
    """CPU seconds the engine has used: in-process (chdb) this process's, all threads; on a server what its
    counters say (system.events). Those counters miss threads: in sample builds on chdb they read 0.37–0.43 of
    the process's CPU, from build to build, so a ratio of two builds read from them swings by ±8%."""
    if sink.info.in_process:
        return time.process_time()
    rows = await sink.query(engine_cpu_sql())
    return float(rows[0]["us"]) / 1e6 if rows and rows[0]["us"] is not None else None


async def timed_build(sink: Sink, scratch: TableRef, index: VectorIndex) -> BuildTime:
    """Wall and engine CPU seconds of building `index` on the scratch table (replacing the one there); the
    caller drops it."""
    await sink.execute(drop_index_sql(scratch, SCRATCH_INDEX))
    await sink.execute(add_index_sql(scratch, index))
    cpu = await engine_cpu(sink)
    start = time.perf_counter()
    await sink.execute(materialize_index_sql(scratch, SCRATCH_INDEX), {"mutations_sync": 2})
    seconds = time.perf_counter() - start
    after = await engine_cpu(sink)
    return BuildTime(seconds, None if cpu is None or after is None else max(0.0, after - cpu))


def sample_index(on: OnSample, build: Candidate) -> VectorIndex:
    """`build` on the scratch table in the sample's graphs."""
    g = on.spec.graph
    return VectorIndex(
        SCRATCH_INDEX,
        "v",
        on.spec.dim,
        on.spec.metric,
        build.quantization,
        build.m,
        build.ef_construction,
        g.granules if g else None,
    )


async def measure_candidate(on: OnSample, build: Candidate, target: float) -> list[Measured]:
    """Build one candidate on the sample (in its graphs) and measure each of its search variants (tune.variants:
    plain, rescored over more candidates), cheapest query first, up to the first that reaches `target`."""
    out: list[Measured] = []
    try:
        took = await timed_build(on.sink, on.scratch, sample_index(on, build))
        rows = await on.sink.query(index_bytes_sql(on.scratch, SCRATCH_INDEX))
        size_bytes = int(rows[0]["b"]) if rows else 0
        for cand in variants(build, on.rescoring):
            recall, ms = await sweep_lists(on.sink, on.queries, on.truth, on.lists, cand, target)
            out.append(Measured(cand, took.seconds, recall, size_bytes, ms, took.cpu_seconds))
            if max(recall.values(), default=0.0) >= target:
                break
    finally:
        await on.sink.execute(drop_index_sql(on.scratch, SCRATCH_INDEX))
    return out


async def build_cost(on: OnSample, build: Candidate) -> BuildTime:
    """Build one candidate on the sample (in its graphs) only for its cost (no recall), then drop it."""
    try:
        return await timed_build(on.sink, on.scratch, sample_index(on, build))
    finally:
        await on.sink.execute(drop_index_sql(on.scratch, SCRATCH_INDEX))


COST_ROUNDS = 2
"""Rounds of the builds a ratio is read from (tune_ahead): the same build on the same sample read 47.9 and 57.9
CPU s minutes apart on this shared machine, noise as large as the ratios sought (1.2–1.5); interference only
slows a build, so the least of the rounds is kept."""


async def least_costs(on: OnSample, builds: Sequence[Candidate], rounds: int = COST_ROUNDS) -> list[float]:
    """The least cost (BuildTime.cost) of each build over `rounds` rounds, the builds interleaved within a round
    so that a slow spell of the machine falls on all of them alike."""
    least = [math.inf] * len(builds)
    for _ in range(max(1, rounds)):
        for i, cand in enumerate(builds):
            least[i] = min(least[i], (await build_cost(on, cand)).cost)
    return least


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
    budget: MemoryBudget = UNBOUNDED,
) -> TuneReport:
    """Sample, measure the grid (stopping early), choose. Needs enough rows for a sample and its queries. The
    scratch table is built in graphs of the size `layout` will build (graphs.plan_sample). Builds that would not
    fit `budget` (this index's share of the memory and of the vector index cache) are not measured; under
    --max-memory the grid goes smallest structure first and, when none that fits reaches the target, on until one
    that does not fit does (to name the memory it would need)."""
    queries_n = min(cfg.queries, max(1, rows // 10))
    planned = plan_sample(layout.graph, cfg.sample_rows, rows - queries_n)
    sample, graph = planned.rows, planned.graph
    if sample < 2 * K:
        raise UsageError(f"table {ref.key} has {rows} rows: too few to tune an index (give --m/--ef-construction)")
    scratch = scratch_ref(ref)
    lists = tuple(sorted(cfg.search_lists))
    quants = cfg.quantizations
    notes: list[str] = []
    rescoring = bool(int((await sink.query(query_setting_exists_sql(RESCORING_SETTING)))[0]["n"]))
    if not rescoring and any(q in quants for q in LOSSY):
        quants = tuple(q for q in quants if searchable(q, rescoring))
        notes.append(f"b1 and rescoring left out: ClickHouse {sink.info.version} has no {RESCORING_SETTING} (25.8+)")
    if not quants:
        raise UsageError("no quantization left to tune: this server cannot rescore b1; give --quantization bf16 or i8")
    notes.extend([planned.note] if planned.note else [])

    def memory(c: Candidate) -> int:
        return resident_bytes(rows, dim, c.quantization, c.m)

    def fits(c: Candidate) -> bool:
        return budget.fits(need(rows, dim, c.quantization, c.m))

    ranked = cfg.max_memory is not None
    grid = default_grid(quants, cfg.ms, cfg.efs, rescoring)
    grid = [c for c in grid if ranked or c.m >= MIN_M_UNBUDGETED] or grid
    grid = by_memory(grid, memory) if ranked else grid
    fitting = [c for c in grid if fits(c)]
    if not fitting:
        smallest = min(grid, key=memory)
        over = budget.check(need(rows, dim, smallest.quantization, smallest.m))
        raise IndexTooLargeError(
            f"{column}: no structure in the grid fits {budget.describe()} for {rows:,} rows × {dim}: the smallest, "
            f"{smallest.label()}, needs {over.line()} ({FORMULA})"
        )
    if rescoring and not rescoring_wanted(ranked, fitting):
        rescoring = False
        grid = [c for c in grid if searchable(c.quantization, rescoring)]
        fitting = [c for c in fitting if searchable(c.quantization, rescoring)]
        notes.append(
            "rescored variants left out: without --max-memory the fastest search wins (rescoring reads each "
            "candidate's full vector; give --max-memory to weigh memory first)"
        )
    todo = grid if ranked else fitting
    started = time.perf_counter()
    try:
        spec = SampleSpec(rows, sample, queries_n, graph, dim, metric)
        on = await fill_sample(sink, ref, column, spec, cfg.seed, lists, rescoring)
        report(
            f"{column}: sampled {sample:,} of {rows:,} rows and {len(on.queries)} query rows with their exact "
            f"neighbours in {time.perf_counter() - started:.1f} s; measuring the grid"
        )
        measured, skipped = await measure_grid(on, todo, cfg.recall_target)
        choice = decide(measured, fits, memory, ranked, cfg.recall_target)
    finally:
        with contextlib.suppress(TargetError):
            await sink.execute(drop_table_sql(scratch))
    if skipped:
        notes.append(
            f"{len(skipped)} build(s) not measured: stopped early at the first that reaches the target, or "
            "skipped where a quantization's recall had plateaued below it"
        )
    notes.append(f"tuning took {time.perf_counter() - started:.1f} s in all")
    return TuneReport(
        column,
        rows,
        dim,
        sample,
        len(on.queries),
        cfg.recall_target,
        lists,
        tuple(measured),
        choice,
        layout,
        tuple(skipped),
        tuple(notes),
        graph.rows if graph else None,
        grid=tuple(todo),
        rescoring=rescoring,
    )


@dataclass(frozen=True, slots=True)
class SampleSpec:
    """A tuning sample of a table of `table_rows`: its rows, its query rows (not among them), its graphs (None:
    one), the column's shape."""

    table_rows: int
    rows: int
    queries: int
    graph: GraphSize | None
    dim: int
    metric: str


@dataclass(frozen=True, slots=True)
class OnSample:
    """A filled scratch table and what every candidate is measured with on it."""

    sink: Sink
    scratch: TableRef
    spec: SampleSpec
    queries: list[str]
    truth: list[list[int]]
    lists: tuple[int, ...]
    rescoring: bool


async def fill_sample(
    sink: Sink,
    ref: TableRef,
    column: str,
    spec: SampleSpec,
    seed: int,
    lists: Sequence[int] = (),
    rescoring: bool = True,
) -> OnSample:
    """(Re)create the scratch table, copy a seeded sample of `ref` into it, merge it into one part, and take the
    query rows and their exact top-10. The caller drops the scratch table.

    One part, merged before any build: one INSERT of more than the server's min_insert_block_size_bytes (256 MiB:
    200,000 rows of 512 float32) writes two parts, and a graph never spans parts. The "one graph of 200,000 rows"
    the tuner measured at 4M was two (~131k and ~69k) until a background merge of the scratch table joined them
    at a moment of its choosing and built that part's graph again, inside whichever build was being timed: on one
    such sample of the 1M table, M=16 ef_c=32 read 0.80× the build CPU of M=12 ef_c=32."""
    scratch = scratch_ref(ref)
    g = spec.graph
    await sink.execute(drop_table_sql(scratch))
    await sink.execute(create_scratch_sql(scratch, g.rows_per_granule if g else None))
    n = spec.table_rows
    await sink.execute(fill_scratch_sql(scratch, ref, column, n, spec.rows, spec.queries, seed))
    await sink.execute(optimize_final_sql(scratch))
    qrows = await sink.query(tune_queries_sql(ref, column, n, spec.rows, spec.queries, seed))
    literals = [vector_literal(np.asarray(r["v"], dtype=np.float32)) for r in qrows]
    queries = [ids_search_sql(scratch, "v", spec.metric, lit, K) for lit in literals]
    truth = await exact_top_ids(sink, scratch, "v", spec.metric, literals, K)
    return OnSample(sink, scratch, spec, queries, truth, tuple(sorted(lists)), rescoring)


async def measure_grid(
    on: OnSample, todo: Sequence[Candidate], target: float
) -> tuple[list[Measured], list[Candidate]]:
    """Build and measure the candidates in order, skipping quantizations that plateaued below the target and
    stopping early (tune.should_stop, MORE_AFTER_REACHING): (measured, skipped)."""
    measured: list[Measured] = []
    skipped: list[Candidate] = []
    for i, build in enumerate(todo):
        ceiling = ceilinged(measured, target)
        if all((v.quantization, v.fetch_multiplier) in ceiling for v in variants(build, on.rescoring)):
            skipped.append(build)
            continue
        got = await measure_candidate(on, build, target)
        measured.extend(got)
        log.debug("%s: build %.1f s, recall %s", build.label(), got[0].build_seconds, [m.recall for m in got])
        if stops_after(measured, got, target):
            skipped.extend(todo[i + 1 :])
            break
    return measured, skipped
