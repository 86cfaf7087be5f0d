"""`index` end to end: tune to a recall target (unless M/ef_construction are given), size the index before
building it (index_limits: what is refused), bring the table to few large parts, build once, check recall on the
full index, record the search list size for `search` and `eval`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from ingest.clickhouse.index_sql import (
    merge_tree_setting_sql,
    optimize_final_sql,
    part_stats_sql,
    parts_summary_sql,
)
from ingest.clickhouse.vector_sql import (
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_M,
    DEFAULT_METRIC,
    DEFAULT_QUANTIZATION,
    VectorIndex,
)
from ingest.core.config import QueryConfig, TuneConfig
from ingest.core.ids import TableRef
from ingest.sinks.base import Sink
from ingest.sinks.merge_hold import heal, paused
from ingest.vector import metadata
from ingest.vector.capacity_run import record_grid
from ingest.vector.check import load_graphs, short_of_goal, verify_recall
from ingest.vector.graphs import Layout, PartStats, graphs_over, plan_layout
from ingest.vector.growth import MeasuredBuild, Projection
from ingest.vector.index import (
    DisplayFactory,
    IndexOutcome,
    IndexRequest,
    connected_sink,
    data_dimension,
    ensure_index,
    plan_index,
    requests_for,
    require_table,
    require_vector_index,
    vector_indexes,
)
from ingest.vector.index_limits import Plan, check_reached, memory_budget, refuse_if_too_large, setting_value
from ingest.vector.index_rebuild import Build, build_again
from ingest.vector.index_report import (
    CacheState,
    IndexEntry,
    IndexRunLog,
    cache_bytes,
    cache_state,
    index_sizes,
    projections,
    sample_builds,
)
from ingest.vector.sizing import UNBOUNDED, MemoryBudget
from ingest.vector.tune import TuneReport, chosen_build
from ingest.vector.tune_ahead import AheadJob, look_ahead
from ingest.vector.tune_run import tune

log = logging.getLogger(__name__)


# ---- building once --------------------------------------------------------------------------------------------


async def part_stats(sink: Sink, ref: TableRef) -> list[PartStats]:
    return [
        PartStats(str(r["partition"]), int(r["rows"]), int(r["granules"]), int(r["bytes"]))
        for r in await sink.query(part_stats_sql(ref))
    ]


async def table_layout(sink: Sink, ref: TableRef, max_graphs: int) -> Layout:
    """The table's parts as they stand, the server's largest merge, and whether it has a vector index already:
    what plan_layout decides the merge and the graph size from."""
    parts = await part_stats(sink, ref)
    cap = await setting_value(sink, merge_tree_setting_sql("max_bytes_to_merge_at_max_space_in_pool"))
    indexed = any(ix.is_vector for ix in await vector_indexes(sink, ref))
    return plan_layout(parts, max_graphs, cap, indexed)


@contextlib.asynccontextmanager
async def merges_paused(sink: Sink, ref: TableRef, pause: bool) -> AsyncIterator[None]:
    """The table's background merges stopped while the tuner times its sample builds (embedded engine only: the
    stop lives in this process, so a killed `index` leaves nothing stopped; a server's would outlive it). The
    load's parts otherwise merge meanwhile on the same cores, which the engine's CPU counters count with the
    builds: on the 2M-row growth table one sample build read 31.4 CPU s where a costlier structure read 19.9.
    `index` merges the table itself right after (merge_before_build), so nothing the merges did is lost."""
    if not pause:
        yield
        return
    async with paused(sink.execute, ref):
        yield


async def merge_before_build(sink: Sink, ref: TableRef, layout: Layout, report: Callable[[str], None]) -> None:
    """Bring a table of more parts than --max-graphs to one part per partition before the first vector index,
    so each graph is built once over a final part (not once per small part, then again per merge)."""
    if not layout.merge:
        report(f"{ref.key}: {layout.why}")
        return
    start = time.monotonic()
    await heal(sink.execute, ref)  # a killed `run --merges deferred` leaves them stopped, and OPTIMIZE refused
    await sink.execute(optimize_final_sql(ref))
    after = int((await sink.query(parts_summary_sql(ref)))[0]["parts"] or 0)
    report(f"{ref.key}: {layout.why}: {layout.parts} parts into {after} in {time.monotonic() - start:.1f} s")


# ---- the command ----------------------------------------------------------------------------------------------


async def plan_request(
    sink: Sink,
    ref: TableRef,
    req: IndexRequest,
    auto: bool,
    cfg: TuneConfig,
    layout: Layout,
    report: Callable[[str], None],
    budget: MemoryBudget = UNBOUNDED,
) -> Plan:
    """Given parameters: as before (an index of the same name but another definition is refused). Tuned: an
    existing index of that name is kept whatever its parameters (it is only materialized where missing). A
    new index is built in the layout's graphs, tuned within `budget`."""
    granularity = layout.graph.granules if layout.graph is not None else None
    if not auto:
        index, existed, rows = await plan_index(sink, ref, req)
        return Plan(index if existed else replace(index, granularity=granularity), existed, rows, None, None)
    rows, dim = await data_dimension(sink, ref, req.column)
    existing = next((ix for ix in await vector_indexes(sink, ref) if ix.name == req.name), None)
    if existing is not None:
        report(f"{req.name}: exists already ({existing.type_full}); not tuning (drop it to tune again)")
        base = VectorIndex(req.name, req.column, dim, req.metric, req.quantization, req.m, req.ef_construction)
        return Plan(from_existing(base, existing.type_full), True, rows, None, None)
    tuned = await tune(sink, ref, req.column, rows, dim, req.metric, cfg, report, layout, budget)
    if cfg.project_rows:
        tuned = await look_ahead(AheadJob(sink, ref, tuned, req.metric, cfg, budget, report))
    c = tuned.choice.candidate
    chosen = VectorIndex(req.name, req.column, dim, req.metric, c.quantization, c.m, c.ef_construction, granularity)
    return Plan(chosen, False, rows, tuned.choice.search_list, tuned)


def from_existing(index: VectorIndex, type_full: str) -> VectorIndex:
    """The parameters of an index that exists (for sizing and reporting), parsed from its type_full."""
    m = re.match(r"vector_similarity\('hnsw',\s*'(\w+)',\s*(\d+)(?:,\s*'(\w+)',\s*(\d+),\s*(\d+))?", type_full)
    if not m:
        return index
    q, mm, ef = m.group(3) or "bf16", int(m.group(4) or 32), int(m.group(5) or 128)
    return VectorIndex(index.name, index.column, int(m.group(2)), m.group(1), q, mm, ef)


@dataclass(frozen=True, slots=True)
class IndexJob:
    """What `index` builds: the indexes asked for, whether to tune them (else their given parameters), how."""

    requests: list[IndexRequest]
    auto: bool
    cfg: TuneConfig


@dataclass(frozen=True, slots=True)
class IndexView:
    """Where `index` tells what it does: a progress display per build, one line per step, the tuning grid, and
    the run's figures (`--report`)."""

    display_for: DisplayFactory
    report: Callable[[str], None]
    show_grid: Callable[[TuneReport], None]
    run_log: IndexRunLog | None = None


async def build_tuned_indexes(q: QueryConfig, job: IndexJob, view: IndexView) -> list[IndexOutcome]:
    """Tune (when `auto`), size, stop on --dry-run, refuse, merge, build, verify and record; one line per step, and
    the seconds of each phase, the structure and its memory in `run_log`."""
    requests, auto, cfg = job.requests, job.auto, job.cfg
    display_for, report, show_grid = view.display_for, view.report, view.show_grid
    ref = q.table
    log_ = view.run_log if view.run_log is not None else IndexRunLog()
    async with connected_sink(q) as sink:
        require_vector_index(sink, q)
        await require_table(sink, q)
        start = time.monotonic()
        layout = await table_layout(sink, ref, cfg.max_graphs)
        budget = await memory_budget(sink, q, cfg.max_memory)
        share = UNBOUNDED if cfg.force else budget.share(len(requests))  # columns share the budget
        async with merges_paused(sink, ref, q.target.spec.kind == "chdb" and auto):
            plans = [await plan_request(sink, ref, req, auto, cfg, layout, report, share) for req in requests]
        log_.add("tuning", time.monotonic() - start)
        for p in plans:
            if p.tuned is not None:
                show_grid(p.tuned)
                await record_grid(sink, ref, p.tuned)  # what `plan --target` projects from
        refuse_if_too_large(plans, budget, cfg.force, report)
        if cfg.dry_run:
            for p in plans:
                projected = sample_projections(p.tuned, cfg) if p.tuned is not None else []
                for proj in projected:
                    report(f"{p.index.name}: {proj.line()}")
                if projected:
                    log_.indexes.append({"name": p.index.name, "projections": [x.as_dict() for x in projected]})
            report("--dry-run: nothing built")
            return []
        check_reached(plans, cfg, budget)
        if any(not p.existed for p in plans):  # after the refusals: a refused index costs no merge
            merging = time.monotonic()
            await merge_before_build(sink, ref, layout, report)
            log_.add("merge", time.monotonic() - merging)
        outcomes = []
        chdb = q.target.spec.kind == "chdb"
        for p in plans:
            outcome = await ensure_index(sink, ref, p.index, p.existed, p.rows, display_for)
            build_cpu = log_.add("build", outcome.seconds)
            report(outcome.line())
            if cfg.project_rows and not p.existed:  # the projection's base: the lesser of two builds
                first = Build(outcome, build_cpu)
                least, said = await build_again(sink, ref, p, first, chdb, display_for, log_)
                outcome, build_cpu = least.outcome, least.cpu_seconds
                report(said)
            cache_before = await cache_state(sink)
            if p.search_list is not None and p.tuned is not None:
                checked = time.monotonic()
                settings, recall = await verify_recall(sink, ref, p.index, p.tuned.choice.candidate, p.search_list, cfg)
                await metadata.record(sink, ref, p.index.name, p.index.type_full, settings, cfg.recall_target, recall)
                said = ", ".join(f"{k}={v}" for k, v in settings.items())
                report(
                    f"{p.index.name}: recall@10 {recall:.3f} on the full index at {said} "
                    f"({cfg.verify_queries} query rows, {time.monotonic() - checked:.1f} s); "
                    "recorded for search and eval"
                )
                if (short := short_of_goal(p.index, recall, cfg)) is not None:
                    report(short)
                log_.add("check", time.monotonic() - checked)
            elif not p.existed:  # built now, no check: one search loads its graphs, so the entry has their memory
                await load_graphs(sink, ref, p.index, cfg.seed)
            engine_cpu = build_cpu if chdb else None  # a server's CPU is not ours
            graphs = await graphs_now(sink, ref, p.index.granularity, layout, report)
            entry = await measured_entry(sink, ref, p, outcome, graphs, cache_before, engine_cpu)
            log_.indexes.append(entry.as_dict(p.search_list))
            if p.tuned is not None:
                log_.indexes[-1]["sample_builds"] = sample_builds(p.tuned)
            projected = projections(entry.measured, cfg.project_rows, layout, cfg.max_graphs)
            for proj in projected:
                report(f"{p.index.name}: {proj.line()}")
            if projected:
                log_.indexes[-1]["projections"] = [proj.as_dict() for proj in projected]
            outcomes.append(outcome)
        log_.total_seconds = time.monotonic() - start
        report(f"total (tuning, merge, build, check) {log_.total_seconds:.1f} s")
        return outcomes


async def graphs_now(
    sink: Sink, ref: TableRef, granularity: int | None, layout: Layout, report: Callable[[str], None]
) -> tuple[int, int]:
    """(graphs, rows of the largest) over the parts as they are after the build: a server keeps merging small
    parts meanwhile (each merge rebuilds the graphs of the part it writes), so the planned layout may be gone."""
    parts = await part_stats(sink, ref)
    if len(parts) == len(layout.after):
        return layout.graphs, layout.graph_rows
    graphs, rows = graphs_over(parts, granularity)
    report(
        f"{ref.sql}: {len(layout.after)} parts became {len(parts)} while the index was built (background merges, "
        f"which rebuild the graphs of the parts they write): measured as {graphs} graphs of up to {rows:,} rows"
    )
    return graphs, rows


async def measured_entry(
    sink: Sink,
    ref: TableRef,
    p: Plan,
    outcome: IndexOutcome,
    graphs: tuple[int, int],
    before: CacheState,
    cpu: float | None,
) -> IndexEntry:
    """The built index as ClickHouse reports it: resident (its uncompressed bytes), what the cache counts once
    the check's searches loaded it, bytes on disk; and the tuner's look ahead, where it ran one."""
    ix = p.index
    count, graph_rows = graphs
    cached = cache_bytes(before, await cache_state(sink), count)
    resident, disk = await index_sizes(sink, ref, ix.name)
    ahead = p.tuned.ahead if p.tuned is not None else ()
    built = MeasuredBuild(p.rows, ix.dim, ix.quantization, ix.m, graph_rows, outcome.seconds, resident, cpu, ahead)
    return IndexEntry(ix, built, count, resident, cached, disk)


def sample_projections(tuned: TuneReport, cfg: TuneConfig) -> list[Projection]:
    """--dry-run --project-rows: the chosen candidate's sample build scaled (no full build to scale from)."""
    m = chosen_build(tuned.measured, tuned.choice)
    if m is None or not cfg.project_rows:
        return []
    c = m.candidate
    graph_rows = tuned.sample_graph_rows or tuned.sample_rows
    built = MeasuredBuild(
        tuned.sample_rows,
        tuned.dim,
        c.quantization,
        c.m,
        graph_rows,
        m.build_seconds,
        m.index_bytes,
        m.build_cpu_seconds,
        tuned.ahead,
    )
    return projections(built, cfg.project_rows, tuned.layout, cfg.max_graphs)


BuildFn = Callable[[QueryConfig, IndexJob, IndexView], Coroutine[Any, Any, list[IndexOutcome]]]
"""`build_tuned_indexes`, or on a cluster vector/cluster_index.py's `build_cluster_indexes`."""


async def finalize_after_load(
    q: QueryConfig,
    display_for: DisplayFactory,
    report: Callable[[str], None],
    show_grid: Callable[[TuneReport], None],
    build: BuildFn = build_tuned_indexes,
) -> list[IndexOutcome]:
    """`run --index`: both embedding columns, tuned to the default recall target."""
    requests = requests_for("all", None, DEFAULT_METRIC, DEFAULT_QUANTIZATION, DEFAULT_M, DEFAULT_EF_CONSTRUCTION)
    return await build(q, IndexJob(requests, True, TuneConfig()), IndexView(display_for, report, show_grid))
