"""`laion-ingest index`: add and materialize HNSW vector indexes after the load, with progress.

The load never pays for the index: it is added afterwards, and `MATERIALIZE INDEX` runs as a background
mutation (`mutations_sync = 0`) that we poll through `system.mutations` / `system.merges`, so a terminal
shows a live bar (log lines otherwise). chdb runs mutations on its background pool while no query of ours
runs, so the same polling works for the embedded target and for a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NoReturn, Protocol

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ingest.cli_support import (
    CaFileOpt,
    DatabaseOpt,
    InsecureOpt,
    PasswordFileOpt,
    TableOpt,
    TargetOpt,
    UserOpt,
    query_settings,
    run_async,
    setup_logging,
)
from ingest.errors import SchemaMismatchError, TargetError, UnsupportedFeatureError, UsageError
from ingest.settings import Settings
from ingest.sinks import open_sink
from ingest.sinks.base import Sink
from ingest.sql import TableRef
from ingest.target import DEFAULT_TARGET
from ingest.vector_sql import (
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

log = logging.getLogger("ingest")

POLL_SECONDS = 0.5
LOG_EVERY_SECONDS = 5.0


# ---- connecting --------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def connected_sink(settings: Settings) -> AsyncIterator[Sink]:
    """A connected sink for commands that only query: never creates the table."""
    sink = open_sink(settings)
    try:
        await sink.connect()
        yield sink
    finally:
        await sink.close()


def require_vector_index(sink: Sink, settings: Settings) -> None:
    """Refuse before sending DDL an old server would answer with a stack trace."""
    info = sink.info
    if not info.vector_index:
        raise UnsupportedFeatureError(
            f"ClickHouse {info.version} at {settings.target.display()} has no vector_similarity index "
            "(needs ClickHouse >= 25.8, or the embedded chdb target)"
        )


async def require_table(sink: Sink, ref: TableRef, settings: Settings) -> None:
    rows = await sink.query(table_exists_sql(ref))
    if not rows or int(rows[0]["n"]) == 0:
        raise TargetError(
            f"table {ref.key} does not exist in {settings.target.display()}: load it first with `laion-ingest run`"
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


class RichBuildDisplay:
    """A live bar of rows indexed, fed from system.mutations / system.merges."""

    def __init__(self, name: str, total: int) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task: TaskID = self._progress.add_task(f"building {name}", total=total)
        self._progress.start()

    def update(self, rows_done: int, rows_total: int) -> None:
        self._progress.update(self._task, completed=rows_done, total=rows_total)

    def close(self) -> None:
        self._progress.stop()


def make_display(enabled: bool, name: str, total: int) -> BuildDisplay:
    if enabled and sys.stderr.isatty():
        return RichBuildDisplay(name, total)
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
    sink: Sink, ref: TableRef, index: VectorIndex, existed: bool, rows: int, progress: bool
) -> IndexOutcome:
    """Add the index unless it exists, then materialize it on every part that lacks it. The server skips
    (wide) parts that already carry it, so re-running costs about what was loaded since; small compact parts
    are rewritten whole, index included, which is cheap because they are small."""
    start = time.monotonic()
    if not existed:
        await sink.execute(add_index_sql(ref, index))
    try:
        await materialize(sink, ref, index.name, progress)
    except TargetError:
        if not existed:  # leave the table as we found it; the error names the cause
            with contextlib.suppress(TargetError):
                await sink.execute(drop_index_sql(ref, index.name))
        raise
    return IndexOutcome(index, existed, rows, time.monotonic() - start)


async def materialize(sink: Sink, ref: TableRef, name: str, progress: bool) -> None:
    """Start `MATERIALIZE INDEX` as a background mutation and poll it to completion."""
    before = {str(r["mutation_id"]) for r in await sink.query(mutations_sql(ref))}
    part_rows = await _part_rows(sink, ref)
    total = sum(part_rows.values())
    await sink.execute(materialize_index_sql(ref, name), {"mutations_sync": 0})
    display = make_display(progress, name, total)
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


async def _watch(sink: Sink, ref: TableRef, name: str, before: set[str], total: int, display: BuildDisplay) -> None:
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
        await asyncio.sleep(POLL_SECONDS)


async def _give_up(sink: Sink, ref: TableRef, name: str, row: dict[str, Any]) -> NoReturn:
    """A failing mutation is retried by the server forever: stop it and say why, in one line."""
    mutation_id = str(row["mutation_id"])
    with contextlib.suppress(TargetError):
        await sink.execute(kill_mutation_sql(ref, mutation_id))
    reason = " ".join(str(row["latest_fail_reason"]).split())
    reason = reason.split(" Stack trace")[0]
    raise TargetError(f"building index {name} on {ref.key} failed: {reason}")


async def build_indexes(
    settings: Settings, requests: list[IndexRequest], progress: bool, report: Callable[[str], None]
) -> list[IndexOutcome]:
    """Connect, refuse old servers, and ensure each requested index in turn."""
    async with connected_sink(settings) as sink:
        require_vector_index(sink, settings)
        await require_table(sink, settings.table, settings)
        plans = [await plan_index(sink, settings.table, req) for req in requests]
        outcomes = []
        for index, existed, rows in plans:
            outcome = await ensure_index(sink, settings.table, index, existed, rows, progress)
            report(outcome.line())
            outcomes.append(outcome)
        return outcomes


def requests_for(
    column: str, name: str | None, metric: str, quantization: str, m: int, ef_construction: int
) -> list[IndexRequest]:
    columns = index_columns(column)
    if name is not None and len(columns) > 1:
        raise UsageError("--name names one index: give --column image_embedding or text_embedding with it")
    return [
        IndexRequest(col, name or default_index_name(col), metric, quantization, m, ef_construction) for col in columns
    ]


async def finalize_after_load(settings: Settings) -> None:
    """`run --index`: both embedding columns, default parameters."""
    requests = requests_for("all", None, DEFAULT_METRIC, DEFAULT_QUANTIZATION, DEFAULT_M, DEFAULT_EF_CONSTRUCTION)
    await build_indexes(settings, requests, settings.progress, typer.echo)


def index_command(
    target: TargetOpt = DEFAULT_TARGET,
    table: TableOpt = "laion",
    database: DatabaseOpt = None,
    column: Annotated[
        Literal["image_embedding", "text_embedding", "all"],
        typer.Option("--column", help="Embedding column to index, or all (both)"),
    ] = "image_embedding",
    name: Annotated[str | None, typer.Option("--name", help="Index name (default image_index / text_index)")] = None,
    metric: Annotated[
        Literal["cosineDistance", "L2Distance"], typer.Option("--metric", help="Distance the index serves")
    ] = "cosineDistance",
    quantization: Annotated[
        Literal["bf16", "f16", "f32", "i8", "b1"],
        typer.Option("--quantization", help="Storage of vectors in the index"),
    ] = "bf16",
    m: Annotated[int, typer.Option("--m", min=2, help="HNSW connections per node")] = DEFAULT_M,
    ef_construction: Annotated[
        int, typer.Option("--ef-construction", min=1, help="HNSW candidate list while building")
    ] = DEFAULT_EF_CONSTRUCTION,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress on a terminal")] = True,
    user: UserOpt = None,
    password_file: PasswordFileOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
) -> None:
    """Add and materialize HNSW vector_similarity indexes (idempotent; dimension read from the data)."""
    setup_logging()
    settings = query_settings(target, table, database, user, password_file, ca_file, insecure)
    requests = requests_for(column, name, metric, quantization, m, ef_construction)
    run_async(build_indexes(settings, requests, progress, typer.echo))
