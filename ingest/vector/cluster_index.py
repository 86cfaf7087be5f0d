"""`index` on a cluster: one index per shard, on the shard's own `{table}_local`, never on the Distributed table.

- Sized per shard: each shard's parts, rows and graphs are its own (`system.parts` of its local table), so each
  shard is merged (when it has more parts than --max-graphs) and gets the GRANULARITY its own rows call for.
- Tuned once, on a sample of all shards' rows (read through the Distributed table into a scratch table on the
  largest shard), with graphs the size of that shard's: the parameters (quantization, M, ef_construction) are the
  same on every shard, as one search list serves them all.
- Built on every shard at once (ADD + MATERIALIZE INDEX on each node an ALTER runs on: one replica per shard when
  replicated), progress summed over the shards into one display.
- Checked: recall@10 against brute force over the whole table, answered the way `search` answers (vector/cluster.py:
  through Distributed when every shard's read uses its index, else fan-out and merge), and the search list that
  reaches the target recorded on every node for `search` and `eval`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ingest.clickhouse import cluster_sql as csql
from ingest.clickhouse.vector_sql import VectorIndex, recall_at_k, same_definition, search_settings
from ingest.core.config import QueryConfig, TuneConfig
from ingest.core.errors import SchemaMismatchError
from ingest.core.ids import TableRef
from ingest.sinks.cluster import ClusterSink, all_of
from ingest.sinks.http import HttpSink
from ingest.vector import metadata
from ingest.vector.autoindex import IndexJob, IndexView, from_existing, merge_before_build, table_layout
from ingest.vector.check import Searcher, short_of_goal, verify_recall
from ingest.vector.cluster import ClusterRoute, KnnSearch, as_cluster, plan_route, run_route
from ingest.vector.graphs import Layout
from ingest.vector.index import (
    BuildDisplay,
    DisplayFactory,
    IndexOutcome,
    IndexRequest,
    connected_sink,
    data_dimension,
    ensure_index,
    require_table,
    require_vector_index,
    vector_indexes,
)
from ingest.vector.index_limits import Plan, check_reached, memory_budget, refuse_if_too_large
from ingest.vector.tune_run import K, tune


@dataclass(frozen=True, slots=True)
class Home:
    """One shard's local table, where its index is built: the node, its name for messages, its layout."""

    sink: HttpSink
    name: str
    layout: Layout

    @property
    def rows(self) -> int:
        return sum(rows for rows, _ in self.layout.after)

    def sized(self, index: VectorIndex) -> VectorIndex:
        """The index with this shard's own graph size (GRANULARITY), as its rows call for."""
        return replace(index, granularity=self.layout.graph.granules if self.layout.graph is not None else None)


class SummedDisplay:
    """One display for a build that runs on every shard at once: each shard's progress adds into it."""

    def __init__(self, display_for: DisplayFactory, name: str, total: int, shards: int) -> None:
        self._display = display_for(name, total)
        self._done = [0] * shards
        self._totals = [0] * shards
        self._open = shards

    def part(self, pos: int) -> DisplayFactory:
        outer = self

        class Share:
            def update(self, rows_done: int, rows_total: int) -> None:
                outer._done[pos], outer._totals[pos] = rows_done, rows_total
                outer._display.update(sum(outer._done), max(sum(outer._totals), sum(outer._done)))

            def close(self) -> None:
                outer._open -= 1
                if outer._open == 0:
                    outer._display.close()

        def make(_name: str, total: int) -> BuildDisplay:
            outer._totals[pos] = total
            return Share()

        return make

    def close(self) -> None:
        """Close the display if a shard's build never got to (it failed before materializing)."""
        if self._open > 0:
            self._open = 0
            self._display.close()


async def homes_of(cluster: ClusterSink, local: TableRef, cfg: TuneConfig) -> list[Home]:
    sinks = cluster.mutation_sinks()
    layouts = await all_of([table_layout(s, local, cfg.max_graphs) for s in sinks])
    what = "shard" if len(sinks) == len(cluster.shard_sinks()) else "node"  # unreplicated replicas: every node
    pairs = zip(sinks, layouts, strict=True)
    return [Home(s, f"{what} {i + 1} ({cluster.node_name(s)})", lay) for i, (s, lay) in enumerate(pairs)]


async def plan_on_cluster(
    cluster: ClusterSink,
    q: QueryConfig,
    homes: list[Home],
    req: IndexRequest,
    auto: bool,
    cfg: TuneConfig,
    report: Callable[[str], None],
) -> tuple[Plan, list[bool]]:
    """What to build (the parameters every shard shares) and, per shard, whether it has the index already. The
    plan's rows are the largest shard's: what one node's index holds and takes to build."""
    local = csql.local_ref(q.table)
    _total, dim = await data_dimension(cluster, q.table, req.column)
    found = [{ix.name: ix for ix in await vector_indexes(h.sink, local)}.get(req.name) for h in homes]
    largest = max(homes, key=lambda h: h.rows)
    wanted = VectorIndex(req.name, req.column, dim, req.metric, req.quantization, req.m, req.ef_construction)
    existing = next((ix for ix in found if ix is not None), None)
    if existing is not None and auto:
        report(f"{req.name}: exists already on {local.key} ({existing.type_full}); not tuning (drop it to tune again)")
        wanted = from_existing(wanted, existing.type_full)
    for home, ix in zip(homes, found, strict=True):
        if ix is not None and not same_definition(ix, wanted):
            raise SchemaMismatchError(
                f"index {req.name} on {local.key} at {home.name} already exists as {ix.describe()}, not "
                f"{wanted.describe()}: drop it first (ALTER TABLE {local.key} DROP INDEX {req.name}) or choose "
                "another --name"
            )
    existed = [ix is not None for ix in found]
    if not auto or existing is not None:
        return Plan(largest.sized(wanted), all(existed), largest.rows, None, None), existed
    report(
        f"{req.column}: tuning on a sample of all shards' rows (through {q.table.key}), in graphs sized for the "
        f"largest shard, {largest.name}: {largest.rows:,} rows"
    )
    tuned = await tune(largest.sink, q.table, req.column, largest.rows, dim, req.metric, cfg, report, largest.layout)
    c = tuned.choice.candidate
    chosen = VectorIndex(req.name, req.column, dim, req.metric, c.quantization, c.m, c.ef_construction)
    return Plan(largest.sized(chosen), False, largest.rows, tuned.choice.search_list, tuned), existed


def cluster_searcher(cluster: ClusterSink, ref: TableRef, index: VectorIndex) -> Searcher:
    """Recall@10 per query the way `search` answers on this cluster: the route is read once per search list."""
    routes: dict[tuple[object, ...], ClusterRoute] = {}

    async def recalls(
        literals: Sequence[str], exact: Sequence[list[int]], size: int, extras: dict[str, int]
    ) -> list[float]:
        opts = {**search_settings(False, size), **extras}
        key = (size, *sorted(extras.items()))
        out = []
        for lit, truth in zip(literals, exact, strict=True):
            search = KnnSearch(ref, index.column, index.metric, lit, K, opts, ids_only=True)
            if key not in routes:
                routes[key] = await plan_route(cluster, search)
            rows, _ = await run_route(cluster, routes[key], search.sqls(), opts, K)
            out.append(recall_at_k([int(r["id"]) for r in rows], truth, K))
        return out

    return recalls


async def build_cluster_indexes(q: QueryConfig, job: IndexJob, view: IndexView) -> list[IndexOutcome]:
    """autoindex.build_tuned_indexes on a cluster: the same steps, per shard (see the module's docstring); the
    total seconds go to `run_log` (the per-phase split is measured on one server)."""
    requests, auto, cfg = job.requests, job.auto, job.cfg
    display_for, report, show_grid, run_log = view.display_for, view.report, view.show_grid, view.run_log
    async with connected_sink(q) as sink:
        cluster = as_cluster(sink)
        assert cluster is not None, "build_cluster_indexes needs --cluster"
        require_vector_index(sink, q)
        await require_table(sink, q)
        start = time.monotonic()
        local = csql.local_ref(q.table)
        homes = await homes_of(cluster, local, cfg)
        for h in homes:
            report(f"{h.name}: {local.key} {h.rows:,} rows in {h.layout.parts} parts; {h.layout.describe()}")
        planned = [await plan_on_cluster(cluster, q, homes, req, auto, cfg, report) for req in requests]
        for p, _ in planned:
            if p.tuned is not None:
                show_grid(p.tuned)
        largest = max(homes, key=lambda h: h.rows)
        budget = await memory_budget(largest.sink, q, cfg.max_memory)
        refuse_if_too_large([p for p, _ in planned], budget, cfg.force, report)
        if cfg.dry_run:
            report("--dry-run: nothing built")
            return []
        check_reached([p for p, _ in planned], cfg, budget)
        for i, h in enumerate(homes):
            if any(not existed[i] for _, existed in planned):
                await merge_before_build(h.sink, local, h.layout, _prefixed(report, h.name))
        outcomes = []
        for p, existed in planned:
            outcome = await _build_everywhere(homes, local, p, existed, display_for, report)
            if p.search_list is not None and p.tuned is not None:
                await _check_and_record(cluster, q.table, p, cfg, report)
            outcomes.append(outcome)
        report(f"total (tuning, merge, build, check) {time.monotonic() - start:.1f} s")
        if run_log is not None:
            run_log.total_seconds = time.monotonic() - start
        return outcomes


def _prefixed(report: Callable[[str], None], prefix: str) -> Callable[[str], None]:
    return lambda line: report(f"{prefix}: {line}")


async def _build_everywhere(
    homes: list[Home],
    local: TableRef,
    p: Plan,
    existed: list[bool],
    display_for: DisplayFactory,
    report: Callable[[str], None],
) -> IndexOutcome:
    """ADD + MATERIALIZE on every shard at once, each with its own graph size; one line per shard."""
    start = time.monotonic()
    summed = SummedDisplay(display_for, p.index.name, sum(h.rows for h in homes), len(homes))
    ix = p.index
    builds = [ensure_index(h.sink, local, h.sized(ix), existed[i], h.rows, summed.part(i)) for i, h in enumerate(homes)]
    try:
        done = await all_of(builds)
    finally:
        summed.close()
    for h, outcome in zip(homes, done, strict=True):
        report(f"{h.name}: {outcome.line()}")
    rows = sum(h.rows for h in homes)
    return IndexOutcome(p.index, all(existed), rows, time.monotonic() - start)


async def _check_and_record(
    cluster: ClusterSink, ref: TableRef, p: Plan, cfg: TuneConfig, report: Callable[[str], None]
) -> None:
    """Recall@10 over the whole table as `search` answers, then the search list recorded on every node."""
    checked = time.monotonic()
    searcher = cluster_searcher(cluster, ref, p.index)
    assert p.tuned is not None
    start = p.tuned.choice.candidate
    settings, recall = await verify_recall(cluster, ref, p.index, start, p.search_list or 0, cfg, searcher)
    nodes = {cluster.node_name(s): s for s in [cluster.entry, *cluster.mutation_sinks()]}
    ix, target = p.index, cfg.recall_target
    await all_of([metadata.record(s, ref, ix.name, ix.type_full, settings, target, recall) for s in nodes.values()])
    said = ", ".join(f"{k}={v}" for k, v in settings.items())
    report(
        f"{p.index.name}: recall@10 {recall:.3f} over the whole table (all shards, against brute force) at {said} "
        f"({cfg.verify_queries} query rows, {time.monotonic() - checked:.1f} s); "
        f"recorded for search and eval on {len(nodes)} node(s)"
    )
    if (short := short_of_goal(p.index, recall, cfg)) is not None:
        report(short)
