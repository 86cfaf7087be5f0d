"""Add and materialize HNSW vector indexes after the load, with progress.

The load never pays for the index: it is added afterwards, and `MATERIALIZE INDEX` runs as a background
mutation (`mutations_sync = 0`) that we poll through `system.mutations` / `system.merges`, so a terminal
shows a live bar (log lines otherwise). chdb runs mutations on its background pool while no query of ours
runs, so the same polling works for the embedded target and for a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from ingest.clickhouse.cluster_sql import local_ref
from ingest.clickhouse.vector_sql import (
    DEFAULT_EF_CONSTRUCTION,
    DEFAULT_M,
    DEFAULT_METRIC,
    DEFAULT_QUANTIZATION,
    ExistingIndex,
    VectorIndex,
    add_index_sql,
    default_index_name,
    dimension_sql,
    drop_index_sql,
    explain_sql,
    explain_used_index,
    index_columns,
    indexes_sql,
    is_materialize_of,
    kill_mutation_sql,
    materialize_index_sql,
    merges_sql,
    mutation_rows_done,
    mutations_sql,
    parts_sql,
    same_definition,
    table_exists_sql,
)
from ingest.core.config import QueryConfig
from ingest.core.errors import SchemaMismatchError, TargetError, UnsupportedFeatureError, UsageError
from ingest.core.ids import TableRef
from ingest.sinks import open_sink
from ingest.sinks.base import Sink

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
POLL_SHARE = 0.05
"""Poll a build every 5% of the time it has taken so far (at least 50 ms, at most POLL_SECONDS): a build of a
few seconds is seen done within a tenth of a second (at a fixed 0.5 s a 3.5 s build took 4.0 s to come back,
measured on chdb), an hour-long one costs three small queries every half second."""
LOG_EVERY_SECONDS = 5.0


# ---- connecting --------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def connected_sink(q: QueryConfig) -> AsyncIterator[Sink]:
    """A connected sink for commands that only query: never creates the table."""
    sink = open_sink(q.target)
    try:
        await sink.connect()
        yield sink
    finally:
        await sink.close()


def index_table(q: QueryConfig) -> TableRef:
    """Where the vector index lives: the local table behind the Distributed one on a cluster."""
    return local_ref(q.table) if q.target.cluster is not None else q.table


def require_vector_index(sink: Sink, q: QueryConfig) -> None:
    """Refuse before sending DDL an old server would answer with a stack trace."""
    info = sink.info
    if not info.vector_index:
        raise UnsupportedFeatureError(
            f"ClickHouse {info.version} at {q.target.display()} has no vector_similarity index "
            "(needs ClickHouse >= 25.8, or the embedded chdb target)"
        )


async def require_table(sink: Sink, q: QueryConfig) -> None:
    ref = q.table
    rows = await sink.query(table_exists_sql(ref))
    if not rows or int(rows[0]["n"]) == 0:
        raise TargetError(
            f"table {ref.key} does not exist in {q.target.display()}: load it first with `laion-ingest run`"
        )


async def vector_indexes(sink: Sink, ref: TableRef) -> list[ExistingIndex]:
    rows = await sink.query(indexes_sql(ref))
    return [ExistingIndex(str(r["name"]), str(r["type"]), str(r["type_full"]), str(r["expr"])) for r in rows]


async def data_dimension(sink: Sink, ref: TableRef, column: str) -> tuple[int, int]:
    """(rows, dim) of a column; refuses an empty table or vectors of differing lengths."""
    row = (await sink.query(dimension_sql(ref, column)))[0]
    n, lo, hi = int(row["n"]), int(row["lo"] or 0), int(row["hi"] or 0)
    if n == 0:
        raise UsageError(f"table {ref.key} is empty: load rows before building an index on {column}")
    if lo != hi or lo == 0:
        raise UsageError(
            f"column {column} of {ref.key} holds vectors of {lo}..{hi} values: a vector index needs one dimension"
        )
    return n, lo


# ---- progress ----------------------------------------------------------------------------------------------


class BuildDisplay(Protocol):
    def update(self, rows_done: int, rows_total: int) -> None: ...
    def close(self) -> None: ...


class LogBuildDisplay:
    """A line every few seconds (no terminal, or --no-progress)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._start = time.monotonic()
        self._last = self._start

    def update(self, rows_done: int, rows_total: int) -> None:
        now = time.monotonic()
        if now - self._last >= LOG_EVERY_SECONDS:
            self._last = now
            pct = 100.0 * rows_done / rows_total if rows_total else 100.0
            log.info(
                "%s: %s/%s rows indexed (%.0f%%), %.0f s",
                self._name,
                f"{rows_done:,}",
                f"{rows_total:,}",
                pct,
                now - self._start,
            )

    def close(self) -> None:
        return None


DisplayFactory = Callable[[str, int], BuildDisplay]
"""Makes the display of one build from the index name and the rows to index (the CLI passes a live bar)."""


def log_display(name: str, _total: int) -> BuildDisplay:
    return LogBuildDisplay(name)


# ---- building ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IndexRequest:
    """What the user asked for; the dimension comes from the data."""

    column: str
    name: str
    metric: str = DEFAULT_METRIC
    quantization: str = DEFAULT_QUANTIZATION
    m: int = DEFAULT_M
    ef_construction: int = DEFAULT_EF_CONSTRUCTION


@dataclass(frozen=True, slots=True)
class IndexOutcome:
    index: VectorIndex
    existed: bool
    rows: int
    seconds: float

    def line(self) -> str:
        if self.existed:
            return (
                f"{self.index.name}: already exists ({self.index.describe()}); "
                f"all {self.rows:,} rows covered, checked in {self.seconds:.1f} s"
            )
        return f"{self.index.name}: built {self.index.describe()} over {self.rows:,} rows in {self.seconds:.1f} s"


async def plan_index(sink: Sink, ref: TableRef, req: IndexRequest) -> tuple[VectorIndex, bool, int]:
    """(index to build, whether an identical one exists, rows): an index of the same name but another
    definition is refused here, before anything is built."""
    rows, dim = await data_dimension(sink, ref, req.column)
    wanted = VectorIndex(req.name, req.column, dim, req.metric, req.quantization, req.m, req.ef_construction)
    found = {ix.name: ix for ix in await vector_indexes(sink, ref)}.get(wanted.name)
    if found is not None and not same_definition(found, wanted):
        raise SchemaMismatchError(
            f"index {wanted.name} on {ref.key} already exists as {found.describe()}, not {wanted.describe()}: "
            f"drop it first (ALTER TABLE {ref.key} DROP INDEX {wanted.name}) or choose another --name"
        )
    return wanted, found is not None, rows


async def ensure_index(
    sink: Sink,
    ref: TableRef,
    index: VectorIndex,
    existed: bool,
    rows: int,
    display_for: DisplayFactory = log_display,
) -> IndexOutcome:
    """Add the index unless it exists, then materialize it on every part that lacks it. The server skips
    (wide) parts that already carry it, so re-running costs about what was loaded since; small compact parts
    are rewritten whole, index included, which is cheap because they are small."""
    start = time.monotonic()
    if not existed:
        await sink.execute(add_index_sql(ref, index))
    try:
        await materialize(sink, ref, index.name, display_for)
    except TargetError:
        if not existed:  # leave the table as we found it; the error names the cause
            with contextlib.suppress(TargetError):
                await sink.execute(drop_index_sql(ref, index.name))
        raise
    return IndexOutcome(index, existed, rows, time.monotonic() - start)


async def materialize(sink: Sink, ref: TableRef, name: str, display_for: DisplayFactory = log_display) -> None:
    """Start `MATERIALIZE INDEX` as a background mutation and poll it to completion."""
    before = {str(r["mutation_id"]) for r in await sink.query(mutations_sql(ref))}
    part_rows = await _part_rows(sink, ref)
    total = sum(part_rows.values())
    await sink.execute(materialize_index_sql(ref, name), {"mutations_sync": 0})
    display = display_for(name, total)
    try:
        await _watch(sink, ref, name, before, total, display)
    except asyncio.CancelledError:
        log.warning(
            "%s: interrupted while building; the mutation stays queued (a server goes on with it, chdb resumes it "
            "when the directory is next opened): rerun `laion-ingest index` to watch it finish",
            name,
        )
        raise
    finally:
        display.close()


async def _part_rows(sink: Sink, ref: TableRef) -> dict[str, int]:
    return {str(r["name"]): int(r["rows"]) for r in await sink.query(parts_sql(ref))}


def poll_interval(elapsed: float) -> float:
    return min(POLL_SECONDS, max(0.05, elapsed * POLL_SHARE))


async def _watch(sink: Sink, ref: TableRef, name: str, before: set[str], total: int, display: BuildDisplay) -> None:
    start = time.monotonic()
    while True:
        ours = [
            r
            for r in await sink.query(mutations_sql(ref))
            if str(r["mutation_id"]) not in before and is_materialize_of(str(r["command"]), name)
        ]
        if not ours or all(int(r["is_done"]) for r in ours):
            display.update(total, total)
            return
        failed = [r for r in ours if str(r["latest_fail_reason"] or "")]
        if failed:
            await _give_up(sink, ref, name, failed[0])
        todo = [str(p) for r in ours for p in r["parts_to_do_names"]]
        merges = [
            ([str(p) for p in m["source_part_names"]], float(m["progress"])) for m in await sink.query(merges_sql(ref))
        ]
        display.update(mutation_rows_done(await _part_rows(sink, ref), todo, merges, total), total)
        await asyncio.sleep(poll_interval(time.monotonic() - start))


async def _give_up(sink: Sink, ref: TableRef, name: str, row: dict[str, Any]) -> NoReturn:
    """A failing mutation is retried by the server forever: stop it and say why, in one line."""
    mutation_id = str(row["mutation_id"])
    with contextlib.suppress(TargetError):
        await sink.execute(kill_mutation_sql(ref, mutation_id))
    reason = " ".join(str(row["latest_fail_reason"]).split())
    reason = reason.split(" Stack trace")[0]
    raise TargetError(f"building index {name} on {ref.key} failed: {reason}")


def requests_for(
    column: str, name: str | None, metric: str, quantization: str, m: int, ef_construction: int
) -> list[IndexRequest]:
    columns = index_columns(column)
    if name is not None and len(columns) > 1:
        raise UsageError("--name names one index: give --column image_embedding or text_embedding with it")
    return [
        IndexRequest(col, name or default_index_name(col), metric, quantization, m, ef_construction) for col in columns
    ]


async def index_used(sink: Sink, sql: str, settings: dict[str, str | int]) -> str | None:
    """The vector index the plan of this exact query reads, if any (from its EXPLAIN indexes = 1)."""
    if not sink.info.vector_index:
        return None
    plan = await sink.query(explain_sql(sql), settings)
    return explain_used_index("\n".join(str(r.get("explain", "")) for r in plan))
