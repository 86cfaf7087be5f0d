"""`index --project-rows`: the index built a second time, and the lesser of the two builds is what the
projection scales.

One build on two shared cores is a noisy base: the same index (bf16 M=12 ef_c=24 over the same 1M rows in graphs
of 62,720, right after the same merge) took 166.7 CPU s in one growth run and 198.7 in the next, and the
projections scaled from them read 1.01 and 1.38 of the same structure built at 2M (bench/growth.py). A second
build costs what the first did (1.5-2 minutes at 1M rows on this machine), and only where a projection is asked
for; the least of two is what the build costs when nothing else gets in its way. It runs before the full-index
check, so the index that is checked, recorded and measured is the one left, and a second build that fails is a
build that failed (the index dropped, the cause in one line), as the first would be.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ingest.clickhouse.vector_sql import drop_index_sql
from ingest.core.ids import TableRef
from ingest.sinks.base import Sink
from ingest.vector.index import DisplayFactory, IndexOutcome, ensure_index
from ingest.vector.index_limits import Plan
from ingest.vector.index_report import IndexRunLog

PHASE = "rebuild"
"""The second build's phase in `--report` (its wall, CPU and monotonic span, apart from the first's)."""


@dataclass(frozen=True, slots=True)
class Build:
    """One build of the index: its outcome (wall seconds) and this process's CPU over it (the engine's on chdb)."""

    outcome: IndexOutcome
    cpu_seconds: float

    def line(self, by_cpu: bool) -> str:
        return f"{self.outcome.seconds:.1f} s" + (f" ({self.cpu_seconds:.1f} CPU s)" if by_cpu else "")


def lesser(first: Build, second: Build, by_cpu: bool) -> Build:
    """The build that cost less: by CPU where it is the engine's (chdb), else by wall (a server's CPU is not
    this process's); the first on a tie."""

    def cost(b: Build) -> float:
        return b.cpu_seconds if by_cpu else b.outcome.seconds

    return second if cost(second) < cost(first) else first


async def build_again(
    sink: Sink, ref: TableRef, p: Plan, first: Build, by_cpu: bool, display_for: DisplayFactory, log_: IndexRunLog
) -> tuple[Build, str]:
    """The index just built dropped and built again with the same definition over the same parts; the lesser of
    the two builds, and a line saying both."""
    started = time.monotonic()
    await sink.execute(drop_index_sql(ref, p.index.name))
    again = await ensure_index(sink, ref, p.index, False, p.rows, display_for)
    second = Build(again, log_.add(PHASE, time.monotonic() - started))
    least = lesser(first, second, by_cpu)
    said = (
        f"{p.index.name}: built again for the projection's base in {second.line(by_cpu)} after "
        f"{first.line(by_cpu)}: the projection scales the {'first' if least is first else 'second'}, the lesser"
    )
    return least, said
