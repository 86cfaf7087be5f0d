"""`index --project-rows`: the built index built once more, and the lesser of the two builds is what the
projection scales.

One build on two shared cores is a noisy base: the same index (bf16 M=12 ef_c=24 over the same 1M rows in graphs
of 62,720, right after the same merge) took 166.7 CPU s in one growth run and 198.7 in the next, and the
projections scaled from them read 1.01 and 1.38 of the same structure built at 2M (bench/growth.py). A second
build costs what the first did (1.5-2 minutes at 1M rows on this machine), and only where a projection is asked
for; the least of two is what the build costs when nothing else gets in its way.
"""

from __future__ import annotations

import time
from dataclasses import replace

from ingest.clickhouse.vector_sql import drop_index_sql
from ingest.core.ids import TableRef
from ingest.sinks.base import Sink
from ingest.vector.index import DisplayFactory, ensure_index
from ingest.vector.index_limits import Plan
from ingest.vector.index_report import IndexEntry, IndexRunLog

PHASE = "rebuild"
"""The second build's phase in `--report` (its wall, CPU and monotonic span, apart from the first's)."""


async def least_of_two_builds(
    sink: Sink,
    ref: TableRef,
    p: Plan,
    entry: IndexEntry,
    engine_cpu: bool,
    display_for: DisplayFactory,
    log_: IndexRunLog,
) -> tuple[IndexEntry, str]:
    """The index dropped and built again with the same definition over the same parts; `entry` with the lesser
    build, and a line saying both. The memory figures stay the first build's (the same graphs; its check loaded
    them)."""
    started = time.monotonic()
    await sink.execute(drop_index_sql(ref, p.index.name))
    again = await ensure_index(sink, ref, p.index, False, p.rows, display_for)
    cpu = log_.add(PHASE, time.monotonic() - started)
    first = entry.measured
    least = first.least_with(again.seconds, cpu if engine_cpu else None)
    said = (
        f"{p.index.name}: built again for the projection's base in {again.seconds:.1f} s"
        + (f" ({cpu:.1f} CPU s)" if engine_cpu else "")
        + f" after {first.build_seconds:.1f} s"
        + (f" ({first.build_cpu_seconds:.1f} CPU s)" if first.build_cpu_seconds is not None else "")
        + f": the projection scales the {'first' if least is first else 'second'}, the lesser"
    )
    return replace(entry, measured=least), said
