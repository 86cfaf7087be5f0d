"""What `index` refuses to build, decided before anything is built: an index over the memory it may use
(--max-memory or the server's RAM, and the vector index cache), and a tuned index no candidate reached the recall
target with. Each refusal is one line naming the cause and what would fit or reach it."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from ingest.clickhouse.index_sql import CACHE_SETTING, os_memory_sql, server_setting_sql
from ingest.clickhouse.vector_sql import VectorIndex
from ingest.core.config import QueryConfig, TuneConfig
from ingest.core.errors import IndexTooLargeError, TargetError, UsageError
from ingest.sinks.base import Sink
from ingest.vector.sizing import FORMULA, MemoryBudget, cheaper_that_fit, human_bytes, need, total_need
from ingest.vector.tune import TuneReport


@dataclass(frozen=True, slots=True)
class Plan:
    """What will be built for one request (after tuning when asked)."""

    index: VectorIndex
    existed: bool
    rows: int
    search_list: int | None
    tuned: TuneReport | None


async def setting_value(sink: Sink, sql: str) -> int | None:
    """One numeric `value` a settings query answers; None where the server lacks it or says nothing usable."""
    try:
        rows = await sink.query(sql)
    except TargetError:
        return None
    try:
        return int(float(rows[0]["value"])) if rows else None
    except (TypeError, ValueError):
        return None


async def memory_budget(sink: Sink, q: QueryConfig, max_memory: int | None) -> MemoryBudget:
    """--max-memory if given, else the server's OSMemoryTotal (chdb: this machine's, it is in-process)."""
    cache = await setting_value(sink, server_setting_sql(CACHE_SETTING))
    if max_memory is not None:
        return MemoryBudget(max_memory, "--max-memory", cache)
    total = await setting_value(sink, os_memory_sql())
    if total is not None:
        return MemoryBudget(total, "the server's OSMemoryTotal", cache)
    if q.target.spec.kind == "chdb":
        return MemoryBudget(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory", cache)
    return MemoryBudget(None, "unknown", cache)


def refuse_if_too_large(plans: list[Plan], budget: MemoryBudget, force: bool, report: Callable[[str], None]) -> None:
    new = [p for p in plans if not p.existed]
    if not new:
        return
    projected = total_need(need(p.rows, p.index.dim, p.index.quantization, p.index.m) for p in new)
    fit = budget.check(projected)
    what = ", ".join(f"{p.index.name} {p.index.quantization} M={p.index.m}" for p in new)
    report(
        f"projected index memory {human_bytes(projected.resident)} resident, {human_bytes(projected.counted)} "
        f"counted by the vector index cache ({what}; {FORMULA}); limits: {budget.describe()}"
    )
    if fit.fits:
        return
    if force:
        report(f"warning: the index may not fit ({fit.limit_source}); building anyway (--force)")
        return
    first = new[0]
    own = (first.index.quantization, first.index.m)
    grid = [(qn, m) for qn in ("bf16", "i8", "b1") for m in (8, 16, 32) if (qn, m) != own]
    alts = cheaper_that_fit(first.rows, first.index.dim, len(new), budget, grid)[-3:][::-1]
    alt_text = "; ".join(f"--quantization {qn} --m {m} ({human_bytes(b)})" for qn, m, b in alts) or "none in the grid"
    raise IndexTooLargeError(
        f"index {what} on {first.rows:,} rows × {first.index.dim} projects to {fit.line()}: configurations that "
        f"fit: {alt_text}; or pass --force"
    )


def unreached_error(name: str, tuned: TuneReport, cfg: TuneConfig, budget: MemoryBudget) -> UsageError:
    """No candidate reaches the target (within the budget): the best reachable recall, and, when a larger
    structure measured does reach it, the memory it would need."""
    c = tuned.choice
    within = f" within {budget.describe()}" if cfg.max_memory is not None else ""
    best = need(tuned.rows, tuned.dim, c.candidate.quantization, c.candidate.m).resident
    text = (
        f"{name}: no candidate{within} reaches recall@10 {cfg.recall_target:.2f} on the sample (best reachable "
        f"{c.sample_recall:.3f}: {c.candidate.label()} at search list {c.search_list}, {human_bytes(best)})"
    )
    if c.needed is not None:
        n = c.needed
        text += (
            f"; {n.candidate.label()} reaches {n.recall:.3f} and needs {human_bytes(n.memory_bytes)} "
            "(--max-memory at least that)"
        )
        return IndexTooLargeError(text)
    return UsageError(
        text + ": lower --recall-target, give --m/--ef-construction, or pass --force to build the best one"
    )


def check_reached(plans: list[Plan], cfg: TuneConfig, budget: MemoryBudget) -> None:
    """Refuse to build a tuned index no candidate reached the target with (unless --force): one line naming the
    best reachable recall and, where a measured structure reaches it, the memory it needs."""
    for p in plans:
        if p.tuned is not None and not p.tuned.choice.reached and not cfg.force:
            raise unreached_error(p.index.name, p.tuned, cfg, budget)
