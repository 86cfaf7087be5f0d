"""`index --project-rows N`: what the tuner would choose for a table of N rows, measured on this table's rows.

A larger table is cut into larger graphs (at most --max-graphs of them), and a larger graph both builds dearer per
row and recalls less at the same structure, so the tuner there chooses a heavier structure. The growth ladder
showed both: 1M synthetic rows in graphs of 62,720 chose bf16 M=12 ef_c=24; 2M (graphs of 125,184) and 4M
(237,760) chose M=16 ef_c=32, whose build took 1.43× the CPU of M=12 ef_c=24 at 4M, and a projection that
scaled the 1M build by one exponent read 0.50–0.62 of the builds measured (bench/growth.py).

So the grid runs again on a sample of this table laid out in the N-row table's graphs (as large as the sample
allows, graphs.MAX_SAMPLE_ROWS: the sample the N-row table's own tuner would take), and reads its choice there and
that structure's build CPU over the structure built here, both in N's graphs on that sample (`cost`, in CPU
seconds, tune.BuildTime). The two builds run again in interleaved rounds, the least of each kept
(tune_run.least_costs): one build on the same sample read 47.9 and 57.9 CPU s minutes apart.

The larger table's tuner decides on a sample of its own, and near the target two samples disagree: four runs of the
2M synthetic table's tuner chose three structures (growth.DECISION_NOISE). So the grid here runs on to the target
+ DECISION_NOISE, and besides the choice (made on the builds a grid stopping at the target measures,
grid_stop.measured_to) names what a sample reading that much higher (`eager`) or lower (`wary`) chooses, each with
its own build cost: the projection is the range over the three.

How a row's build cost grows with its graph (b) is not read here but is growth.GRAPH_EXPONENT: the same 200,000
sample rows of the 1M table, bf16 M=12 ef_c=24, cost 205 µs of CPU a row in graphs of 62,720, 203 in graphs of
125,184 and 185 in one graph of 200,000 (the round before: 319, 233, 270), where the table's full builds grew 167 →
207 → 233 from graphs of 62,720 to 250,112; b fitted from such pairs read 0.00–0.16 in all five look aheads of the
growth ladder, and projections scaled by it read 0.69–0.80 of the builds measured.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from ingest.clickhouse.index_sql import drop_table_sql, scratch_ref
from ingest.core.config import TuneConfig
from ingest.core.errors import TargetError
from ingest.core.ids import TableRef
from ingest.sinks.base import Sink
from ingest.vector.graphs import GraphSize, plan_sample
from ingest.vector.grid_stop import measured_to
from ingest.vector.growth import DECISION_NOISE, ENDS, MIN_AHEAD_SPAN, Ahead, Grid, merged_graph_rows
from ingest.vector.sizing import MemoryBudget, need, resident_bytes
from ingest.vector.tune import Candidate, TuneReport, chosen_build, decide
from ingest.vector.tune_run import COST_ROUNDS, SampleSpec, fill_sample, least_costs, measure_grid

WARY_TARGET_CAP = 0.995
"""The wary choice's target never above this: recall@10 1.0 is what brute force gives."""


def graph_at(rows: int, rows_per_granule: int, max_graphs: int) -> GraphSize:
    """The graphs `index` would cut a table of `rows` into (merged, at most `max_graphs` of them)."""
    graph_rows, graphs = merged_graph_rows(rows, rows_per_granule, max_graphs)
    return GraphSize(max(1, graph_rows // max(1, rows_per_granule)), max(1, rows_per_granule), graphs)


@dataclass(frozen=True, slots=True)
class AheadJob:
    """What looking ahead works on: the table, the tuner's report on it, and how `index` was asked to tune."""

    sink: Sink
    ref: TableRef
    tuned: TuneReport
    metric: str
    cfg: TuneConfig
    budget: MemoryBudget
    report: Callable[[str], None]


async def look_ahead(job: AheadJob) -> TuneReport:
    """The tuned report with what the grid chooses at each --project-rows above the table's rows (Ahead)."""
    tuned = job.tuned
    aheads: list[Ahead] = []
    notes: list[str] = []
    for rows in sorted({n for n in job.cfg.project_rows if n > tuned.rows}):
        started = time.perf_counter()
        got, note = await ahead_at(job, rows)
        notes.append(f"{note} ({time.perf_counter() - started:.1f} s)")
        if got is not None:
            aheads.append(got)
    return replace(tuned, ahead=tuple(aheads), notes=tuned.notes + tuple(notes))


async def ahead_at(job: AheadJob, rows: int) -> tuple[Ahead | None, str]:
    """(what the tuner chooses at `rows`, a line saying so) on a sample in that table's graphs."""
    tuned, cfg = job.tuned, job.cfg
    here = chosen_build(tuned.measured, tuned.choice)
    rpg = tuned.layout.rows_per_granule
    graph = graph_at(rows, rpg, cfg.max_graphs)
    planned = plan_sample(graph, cfg.sample_rows, tuned.rows - tuned.queries)
    there_rows = planned.graph.rows if planned.graph is not None else planned.rows
    here_rows = tuned.sample_graph_rows or tuned.sample_rows
    if here is None or there_rows < MIN_AHEAD_SPAN * here_rows:
        return None, (
            f"at {rows:,} rows (graphs of {graph.rows:,}): not looked ahead, this table's sample cannot hold "
            f"graphs much larger than its own {here_rows:,} rows (the projection scales the structure built here)"
        )

    def memory(c: Candidate) -> int:
        return resident_bytes(rows, tuned.dim, c.quantization, c.m)

    def fits(c: Candidate) -> bool:
        return job.budget.fits(need(rows, tuned.dim, c.quantization, c.m))

    ranked = cfg.max_memory is not None
    todo = list(tuned.grid) if ranked else [c for c in tuned.grid if fits(c)]
    if not todo:
        return None, f"at {rows:,} rows: no structure in the grid fits {job.budget.describe()}"
    job.report(
        f"{tuned.column}: looking ahead to {rows:,} rows: the grid again on {planned.rows:,} rows in graphs of "
        f"{there_rows:,} (that table's graphs hold {graph.rows:,})"
    )
    spec = SampleSpec(tuned.rows, planned.rows, tuned.queries, planned.graph, tuned.dim, job.metric)
    built = tuned.choice.candidate.build()
    target = cfg.recall_target
    targets = {"eager": max(target - DECISION_NOISE, 0.0), "wary": min(target + DECISION_NOISE, WARY_TARGET_CAP)}
    try:
        on = await fill_sample(job.sink, job.ref, tuned.column, spec, cfg.seed, tuned.search_lists, tuned.rescoring)
        measured, _ = await measure_grid(on, todo, targets["wary"])  # on past the target: the wary end's grid
        choice = decide(measured_to(measured, target), fits, memory, ranked, target)
        c = choice.candidate.build()
        ends: dict[str, Candidate] = {}
        for end, aim in targets.items():
            other = decide(measured_to(measured, aim), fits, memory, ranked, aim)
            if other.reached and other.candidate.build() != c:
                ends[end] = other.candidate.build()
        builds = list(dict.fromkeys([c, built, *ends.values()]))
        least = dict(zip(builds, await least_costs(on, builds), strict=True)) if len(builds) > 1 else {c: 1.0}
    finally:
        with contextlib.suppress(TargetError):
            await job.sink.execute(drop_table_sql(scratch_ref(job.ref)))

    def ahead_of(b: Candidate, grid: Grid = (), **others: Ahead | None) -> Ahead:
        cost = least[b] / least[built] if least[built] > 0 else 1.0
        return Ahead(rows, b.quantization, b.m, b.ef_construction, cost, there_rows, b == built, grid, **others)

    grid = tuple((m.candidate.label(), tuple(sorted(m.recall.items()))) for m in measured)
    others = {end: ahead_of(b) for end, b in ends.items()}
    ahead = ahead_of(c, grid, **others)
    said = (
        "the same structure"
        if c == built
        else f"{ahead.label}, × {ahead.cost:.2f} the build CPU of {here.candidate.label()} ({least[c]:.1f} and "
        f"{least[built]:.1f} CPU s, the least of {COST_ROUNDS} rounds)"
    )
    for end, how in ENDS.items():
        if end in others:
            said += (
                f"; at recall@10 {targets[end]:.2f} (a sample there reading {DECISION_NOISE:g} {how}) "
                f"{others[end].label}, × {others[end].cost:.2f}"
            )
    return ahead, (
        f"at {rows:,} rows (graphs of {graph.rows:,}; sampled in graphs of {there_rows:,}): the grid chooses {said}"
        f"{'' if choice.reached else ' (none reached the target there)'}"
    )
