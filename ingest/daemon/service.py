"""The daemon: watch a source, load each shard that appears, serve /healthz /readyz /metrics.

Every poll asks the source which shards are complete there, drops those the ledger lists as done, and runs the
same pipeline and ledger as `run` over the rest, on one sink connection kept across polls. A quarantined shard
is tried once per daemon start, then again only when its files change (size or mtime: local sources; an HTTP
mirror's files are not re-checked until the next start). A poll that fails is logged, its unfinished shards
are counted as failed, and the next poll backs off; errors no retry can fix (auth, config, schema) end the
process.

SIGTERM/SIGINT: take no new shard, let in-flight batches drain, flush the ledger, exit 0 within --drain-seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from ingest.core.config import RunConfig
from ingest.core.errors import (
    EXIT_INTERRUPTED,
    AuthError,
    ConfigError,
    IngestError,
    LedgerError,
    SchemaMismatchError,
    UnreachableTargetError,
    UnsupportedFeatureError,
    UsageError,
    first_error,
)
from ingest.core.layout import LAION400M, Layout
from ingest.core.metrics import SHARDS
from ingest.core.retry import RetryPolicy, retrying
from ingest.core.tasks import stopped
from ingest.daemon.backoff import back_off, poll_wait
from ingest.daemon.metrics import (
    INDEX_BUILDS,
    INDEX_ROWS_BUILT,
    INDEX_UNCOVERED_PARTS,
    INDEX_UNCOVERED_ROWS,
    LAST_POLL,
    POLL_ERRORS,
    SHARDS_PENDING,
)
from ingest.load.ledger import Ledger
from ingest.load.pipeline import Pipeline
from ingest.load.progress import LogReporter
from ingest.load.runner import ledger_for, prepare_sink, resolve_schema
from ingest.serve.engine import Searcher
from ingest.serve.service import ServeSpec, refresh_quietly, running_service
from ingest.sinks.base import Sink
from ingest.stages.probe import needs_probe
from ingest.stages.shard import ShardFiles
from ingest.stages.source import Source, open_source
from ingest.vector.coverage import coverage, prepare_growing_table, rematerialize

log = logging.getLogger(__name__)
T = TypeVar("T")

LAION_SHARDS = "0-409"
"""Candidates for an HTTP mirror when --shards is not given (a directory is simply listed)."""
READY_TIMEOUT_SECONDS = 3.0

Signature = tuple[tuple[int, int], ...]
"""(size, mtime_ns) of a shard's three files: a changed signature is a reason to retry a quarantined shard."""

FATAL_ERRORS: tuple[type[IngestError], ...] = (
    UsageError,
    ConfigError,
    AuthError,
    SchemaMismatchError,
    UnsupportedFeatureError,
    LedgerError,
)
"""Errors that no amount of polling fixes: the daemon exits with their code instead of backing off."""


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    """Knobs of the daemon itself (the loading knobs live in RunConfig)."""

    candidates: tuple[int, ...] | None
    """Shards to look for; None lists whatever a local directory holds."""
    poll_seconds: float = 30.0
    http_host: str = "0.0.0.0"
    http_port: int = 9108
    drain_seconds: float = 25.0
    """The whole shutdown budget; the pipeline gets most of it (LoadConfig.drain_seconds), closing the rest."""
    index_every: float = 0.0
    """Seconds between re-materializations of the vector indexes over new parts (0 = never)."""
    serve: ServeSpec | None = None
    """`--serve`: answer clip-retrieval searches on the loaded table from this process (ingest/serve)."""


# -- pure decisions -------------------------------------------------------------------------------------------
def shards_to_load(
    available: Iterable[int],
    ledger: Ledger,
    tried: Mapping[int, Signature | None],
    signature: Callable[[int], Signature | None],
) -> list[int]:
    """Available shards not complete in the ledger; a quarantined one only if this daemon has not tried it yet,
    or its files changed since (`tried` maps shard → signature when the daemon set out to load it; a None
    signature, as for an HTTP mirror, never counts as changed).
    """
    todo = []
    for shard in sorted(set(available)):
        if ledger.is_complete(shard):
            continue
        if shard in ledger.quarantined and shard in tried:
            sig = signature(shard)
            if sig is None or tried[shard] == sig:
                continue
        todo.append(shard)
    return todo


def local_signature(root: Path, shard: int, layout: Layout = LAION400M) -> Signature | None:
    """Sizes and mtimes of a local shard's three files; None when one is missing."""
    try:
        stats = [p.stat() for p in ShardFiles.in_dir(root, shard, layout).all()]
    except OSError:
        return None
    return tuple((st.st_size, st.st_mtime_ns) for st in stats)


# -- the daemon -----------------------------------------------------------------------------------------------
class Daemon:
    """Poll, load, serve health; shutdown is ordered: pipeline drain, ledger flush, source, sink, web server."""

    def __init__(self, settings: RunConfig, opts: DaemonOptions, stop: asyncio.Event) -> None:
        self.s = settings
        self.opts = opts
        self.stop = stop
        self.sink: Sink | None = None
        self.source: Source | None = None
        self.ledger: Ledger | None = None
        self.tried: dict[int, Signature | None] = {}
        self.failures = 0
        self.unreachable = False
        """The last poll failed because the target could not be reached: its backoff ends when it answers."""
        self.last_error = ""
        self.next_index = 0.0
        self.table_prepared = False
        self.searcher: Searcher | None = None

    async def run(self) -> int:
        from ingest.daemon.health import make_app, start_server

        self.ledger = ledger_for(self.s)
        runner = await start_server(
            make_app(self.readiness, READY_TIMEOUT_SECONDS), self.opts.http_host, self.opts.http_port
        )
        deadline, stack = asyncio.create_task(self._arm_hard_deadline()), contextlib.AsyncExitStack()
        try:
            self.source = open_source(self.s.source)
            if await self._learn_schema():
                self.sink = await self._connect()
            if self.sink is not None:
                log.info(
                    "daemon: watching %s every %g s, loading into %s table %s",
                    self.s.source.root,
                    self.opts.poll_seconds,
                    self.s.target.display(),
                    self.s.table.key,
                )
                if self.opts.index_every > 0:  # before any load: merges of its parts must not build the index
                    await self._index_guarded(prepare_only=True)
                if (spec := self.opts.serve) is not None:  # search on the daemon's sink: one process, one chdb dir
                    served = await stack.enter_async_context(running_service(self.s.query, *spec.parts, self.sink))
                    self.searcher = served[0].searcher
                while not self.stop.is_set():
                    await self._poll_guarded()
                    await refresh_quietly(self.searcher)  # new rows: search learns the table's facts again
                    if self.opts.index_every > 0 and not self.stop.is_set():
                        await self._index_guarded()
                    await self._back_off()
        finally:
            deadline.cancel()
            await stack.aclose()  # the search service stops before the sink it shares
            self.ledger.flush()
            if self.source is not None:
                await self.source.close()
            if self.sink is not None:
                await self.sink.close()
            await runner.cleanup()
        log.info("daemon: stopped cleanly (ledger flushed)")
        return EXIT_INTERRUPTED

    async def readiness(self) -> str | None:
        """Ready = connected and the target answers `SELECT 1` now; not ready while shutting down."""
        if self.stop.is_set():
            return "shutting down"
        if self.sink is None:
            return f"not connected to the target yet{': ' + self.last_error if self.last_error else ''}"
        await self.sink.query("SELECT 1 AS ok")
        return None

    async def _learn_schema(self) -> bool:
        """Without --dim (or with --extra-columns) the table's schema comes from the first shard to appear;
        False if stopped while waiting."""
        assert self.source is not None
        if not needs_probe(self.s.load):
            self.s = await resolve_schema(self.s, self.source, [])  # --dim given: the flags' schema, no probe
            return True
        await self.source.check_root()
        while not self.stop.is_set():
            candidates = list(self.opts.candidates) if self.opts.candidates is not None else None
            try:
                shards = await self.source.available(candidates)
                if shards:
                    self.s = await resolve_schema(self.s, self.source, shards)
                    return True
                self.last_error = "waiting for a first shard to learn the table's schema (or pass --dim)"
            except IngestError as exc:
                if not exc.retriable:
                    raise
                self.last_error = str(exc)
                log.warning("daemon: cannot read a first shard yet (%s)", exc)
            await self._sleep(self.opts.poll_seconds)
        return False

    async def _connect(self) -> Sink | None:
        """Reach the target, retrying what may pass (it may start after us) under the one retry policy, with no
        limit on attempts and waits that a stop interrupts; None if stopped meanwhile."""
        policy = RetryPolicy(
            max_retries=sys.maxsize,
            max_seconds=max(self.s.load.retry.max_seconds, 1.0),
            base_seconds=self.opts.poll_seconds,
        )

        def remember(exc: IngestError, _attempt: int) -> str:
            self.last_error = str(exc)
            return ""

        try:
            return await retrying(
                policy,
                lambda: self._unless_stopped(prepare_sink(self.s)),
                f"daemon: target {self.s.target.display()} unreachable",
                log,
                remember,
                self._sleep,
            )
        except _Stopped:
            return None

    async def _poll_guarded(self) -> None:
        """One poll; a failure that a later poll may fix is logged and backed off, a fatal one propagates."""
        try:
            await self.poll()
            self.failures = 0
        except Exception as exc:
            err = first_error(exc, IngestError)
            if err is None:
                raise
            if isinstance(err, FATAL_ERRORS):
                raise err from None
            self.failures += 1
            self.last_error = str(err)
            self.unreachable = isinstance(err, UnreachableTargetError)
            POLL_ERRORS.inc()
            log.error(
                "daemon: poll failed: %s; next poll in %.0f s", err, poll_wait(self.opts.poll_seconds, self.failures)
            )
        finally:
            LAST_POLL.set(time.time())

    async def poll(self) -> None:
        """Find new shards and load them through one Pipeline (fatal errors propagate after counting them)."""
        assert self.sink is not None and self.source is not None and self.ledger is not None
        ledger = self.ledger
        candidates = None
        if self.opts.candidates is not None:
            # ask the source only about shards we would load (an HTTP mirror answers HEAD per file)
            candidates = shards_to_load(self.opts.candidates, ledger, self.tried, self._signature)
            if not candidates:
                SHARDS_PENDING.set(0)
                return
        available = await self.source.available(candidates)
        todo = shards_to_load(available, ledger, self.tried, self._signature)
        SHARDS_PENDING.set(len(todo))
        if not todo or self.stop.is_set():
            return
        log.info("daemon: %d new shard(s): %s", len(todo), ", ".join(map(str, todo)))
        for shard in todo:
            self.tried[shard] = self._signature(shard)
        pipeline = Pipeline(
            replace(self.s, shards=tuple(todo)), self.sink, self.source, ledger, LogReporter(), self.stop
        )
        try:
            await pipeline.run(todo)
        finally:
            finished = set(pipeline.result.shards_done) | set(pipeline.result.shards_bad)
            unfinished = [s for s in todo if s not in finished]
            if unfinished and not self.stop.is_set():
                SHARDS.labels(status="failed").inc(len(unfinished))
        SHARDS_PENDING.set(0)

    async def _index_guarded(self, prepare_only: bool = False) -> None:
        """Count parts the vector index does not cover; every --index-every seconds, build it for them."""
        assert self.sink is not None
        try:
            if not self.table_prepared:
                for note in await prepare_growing_table(self.sink, self.s.table):
                    log.warning("daemon: %s", note)
                self.table_prepared = True
            if prepare_only:
                return
            cov = await coverage(self.sink, self.s.table)
            INDEX_UNCOVERED_PARTS.set(cov.uncovered_parts)
            INDEX_UNCOVERED_ROWS.set(cov.uncovered_rows)
            if time.monotonic() < self.next_index:
                return
            self.next_index = time.monotonic() + self.opts.index_every
            parts, rows = await rematerialize(self.sink, self.s.table)
            if parts:
                INDEX_BUILDS.inc()
                INDEX_ROWS_BUILT.inc(rows)
                log.info("daemon: vector index built for %d new part(s), %s rows", parts, f"{rows:,}")
            cov = await coverage(self.sink, self.s.table)
            INDEX_UNCOVERED_PARTS.set(cov.uncovered_parts)
            INDEX_UNCOVERED_ROWS.set(cov.uncovered_rows)
        except IngestError as exc:
            if isinstance(exc, FATAL_ERRORS):
                raise
            log.error("daemon: index upkeep failed: %s; retrying at the next interval", exc)

    def _signature(self, shard: int) -> Signature | None:
        if self.s.source.is_http:
            return None
        return local_signature(Path(self.s.source.root), shard, self.s.source.layout)

    async def _back_off(self) -> None:
        sink, wait = self.sink, poll_wait(self.opts.poll_seconds, self.failures)
        probe = (lambda: sink.query("SELECT 1 AS ok")) if self.unreachable and sink is not None else None
        await back_off(wait, self._sleep, probe, self.stop.is_set)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake at once on SIGTERM."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def _unless_stopped(self, coro: Awaitable[T]) -> T:
        """Await `coro`, cancelling it if a stop arrives first (connecting must not delay shutdown)."""
        task = asyncio.ensure_future(coro)
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not task.done():
            await stopped(task)
            raise _Stopped
        return task.result()

    async def _arm_hard_deadline(self) -> None:
        """Last resort: if an ordered stop overruns --drain-seconds, exit anyway (the ledger reconciles)."""
        await self.stop.wait()
        timer = threading.Timer(self.opts.drain_seconds, _hard_exit, (self.opts.drain_seconds,))
        timer.daemon = True
        timer.start()


class _Stopped(Exception):
    """A stop arrived while connecting."""


def _hard_exit(drain_seconds: float) -> None:
    log.warning("daemon: shutdown overran --drain-seconds %g; exiting now (the next start reconciles)", drain_seconds)
    os._exit(EXIT_INTERRUPTED)


def pipeline_drain_seconds(drain_seconds: float) -> float:
    """The pipeline's share of the drain budget: the rest is for closing sink, source and web server."""
    return max(0.0, drain_seconds - min(5.0, drain_seconds * 0.2))
