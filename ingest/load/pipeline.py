"""The stages wired together with bounded asyncio queues.

    fetch (download_concurrency) → ready shards → validate + plan segments (executor) → segment queue
    → insert workers (insert_concurrency), each streaming one segment: blocks read (executor) → sink → ledger

A segment is the committed unit (one INSERT = one part, ~61k LAION rows); a block is the unit read and encoded (4,096
rows). An insert worker owns one segment's stream: a producer reads its blocks into a small queue that the sink
consumes as the INSERT body, so memory is bounded by workers × (queue depth + 2) × block size whatever the shard
or segment size. A sink that takes a segment as one column-major Native block (HTTP Native) gets it as pieces
instead (ingest/core/pieces.py): the segment's scalar columns, then each vector column a block's rows at a time,
so memory stays bounded the same way. A retried segment is read again from the shard files, never buffered.

The target may still be opening when the run starts (`sink` given as the task opening it): fetch, validate and
plan go ahead meanwhile, and only the insert workers wait for it.

Shutdown is ordered: on stop we take no new shard and start no new segment, let the in-flight segments finish
(up to drain_seconds; an abandoned one commits nothing and the next run reconciles it), then flush the ledger.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ingest.core import metrics
from ingest.core.config import RunConfig
from ingest.core.errors import BadShardError, IngestError, SourceError, exception_leaves, first_error
from ingest.core.pieces import Piece
from ingest.core.plan import ID_STRIDE, SegmentPlan, plan_segments
from ingest.core.tasks import stopped
from ingest.load.landing import Landing
from ingest.load.ledger import Ledger
from ingest.load.progress import Reporter
from ingest.load.segment_read import SegmentRead
from ingest.sinks.base import Sink, TakesColumns
from ingest.stages.segment_columns import WindowPool, read_segment_columns
from ingest.stages.shard import ShardFiles, ValidShard, gated, read_segment, validate_shard
from ingest.stages.source import Source

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    shards_done: list[int] = field(default_factory=list)
    shards_bad: dict[int, str] = field(default_factory=dict)
    rows_inserted: int = 0
    rows_already: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    bytes_sent: int = 0
    """Insert body bytes on the wire (HTTP targets; 0 where there is no wire)."""


@dataclass
class _ShardJob:
    valid: ValidShard
    remaining: int
    active: int = 0
    failed: bool = False


_DONE = None

_Segments = asyncio.Queue[tuple[_ShardJob, SegmentPlan] | None]


@dataclass
class _Started:
    """What a worker starts for its next segment while the current one lands: the read, and the count the first
    attempt starts from (Landing.settled_count)."""

    read: SegmentRead
    counted: asyncio.Task[int]

    async def close(self) -> None:
        """Stop both (idempotent): a count nobody used is cancelled, and its error, if it had one, dropped."""
        await stopped(self.counted)
        await self.read.close()


@dataclass
class _Taken:
    """A segment a worker took off the queue, and what is started of it (None: not to be started)."""

    job: _ShardJob
    seg: SegmentPlan
    started: _Started | None


class _DrainTimeout(Exception):
    """Raised by the watchdog when in-flight segments did not finish within drain_seconds."""


class Pipeline:
    def __init__(
        self,
        settings: RunConfig,
        sink: Sink | asyncio.Task[Sink],
        source: Source,
        ledger: Ledger,
        reporter: Reporter,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.cfg = settings.load
        self.table = settings.table
        self._schema = settings.target.schema
        self._fetchers = max(1, settings.source.download_concurrency)
        self._workers = max(1, self.cfg.insert_concurrency)
        self._sink = sink
        self.source = source
        self.ledger = ledger
        self.reporter = reporter
        self.stop = stop or asyncio.Event()
        self.result = RunResult()
        self._read_pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="read")
        self._scan_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="nan-scan")
        """A shard's NaN/Inf scans, left running while its first segments are sent (validate_shard's defer_scan);
        apart from the read pool, whose threads may be waiting for the scans' verdict."""
        self._landing: Landing | None = None
        self._windows = WindowPool()

    @property
    def sink(self) -> Sink:
        """The open sink (insert workers only: they wait for it in `_connected`)."""
        assert not isinstance(self._sink, asyncio.Task), "the sink is still opening"
        return self._sink

    async def _connected(self) -> Landing:
        """Wait for the sink to open (opening it imports its client library and asks the server: ~0.15 s of a
        run's start, in which the first shard is validated); the Landing over it. Nothing is recorded of a shard
        (planned, quarantined) before: a run whose target fails (unreachable, unknown cluster) says only that."""
        if isinstance(self._sink, asyncio.Task):
            self._sink = await asyncio.shield(self._sink)  # one worker's cancellation must not cancel the opening
        if self._landing is None:
            self._landing = Landing(self._sink, self.table, self.cfg.retry, use_token=self._sink.info.dedup_token)
        return self._landing

    async def run(self, shards: list[int]) -> RunResult:
        """Load `shards` (finished ones are skipped); returns what happened. Fatal errors propagate."""
        t0 = time.monotonic()
        todo = [s for s in shards if not self.ledger.is_complete(s)]
        for s in shards:
            if self.ledger.is_complete(s):
                self.result.shards_done.append(s)
        ready: asyncio.Queue[ShardFiles | None] = asyncio.Queue(maxsize=self._fetchers)
        segments: _Segments = asyncio.Queue(maxsize=self._workers)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._fetch_all(todo, ready))
                tg.create_task(self._plan_all(ready, segments))
                workers = [tg.create_task(self._insert_worker(segments)) for _ in range(self._workers)]
                watchdog = tg.create_task(self._watchdog())
                await asyncio.gather(*workers)
                watchdog.cancel()
        except ExceptionGroup as group:
            leaves = exception_leaves(group)
            cause = first_error(group, IngestError)
            if cause is not None:
                raise cause from None  # callers see our error tree, not a TaskGroup wrapper
            if not all(isinstance(e, _DrainTimeout) for e in leaves):
                raise
            log.warning(
                "drain timed out after %.0fs: abandoned in-flight segments (the next run reconciles them)",
                self.cfg.drain_seconds,
            )
        finally:
            self._read_pool.shutdown(wait=False, cancel_futures=True)
            self._scan_pool.shutdown(wait=False, cancel_futures=True)
            self.ledger.flush()
            self.reporter.close()
        self.result.interrupted = self.stop.is_set()
        self.result.seconds = time.monotonic() - t0
        return self.result

    async def _watchdog(self) -> None:
        await self.stop.wait()
        await asyncio.sleep(self.cfg.drain_seconds)
        raise _DrainTimeout

    # -- stage 1: fetch -------------------------------------------------------------------------------------
    async def _fetch_all(self, shards: list[int], ready: asyncio.Queue[ShardFiles | None]) -> None:
        sem = asyncio.Semaphore(self._fetchers)

        async def one(shard: int) -> None:
            try:
                files = await self.source.fetch(shard)
            except (BadShardError, SourceError) as exc:
                if exc.retriable:
                    raise
                await self._quarantine(shard, exc if isinstance(exc, BadShardError) else BadShardError(shard, str(exc)))
                return
            finally:
                sem.release()
            await ready.put(files)

        async with asyncio.TaskGroup() as tg:
            for shard in shards:
                await sem.acquire()
                if self.stop.is_set():
                    sem.release()
                    break
                tg.create_task(one(shard))
        await ready.put(_DONE)

    # -- stage 2: validate, plan ----------------------------------------------------------------------------
    async def _plan_all(self, ready: asyncio.Queue[ShardFiles | None], segments: _Segments) -> None:
        loop = asyncio.get_running_loop()
        while (files := await ready.get()) is not _DONE:
            if self.stop.is_set():
                continue
            try:
                valid = await loop.run_in_executor(
                    self._read_pool, validate_shard, files, self._schema, self.cfg.on_nan, self._scan_pool
                )
            except BadShardError as exc:
                await self._quarantine(files.shard, exc)
                continue
            await self._plan_shard(valid, segments)
        for _ in range(self._workers):
            await segments.put(_DONE)

    async def _plan_shard(self, valid: ValidShard, segments: _Segments) -> None:
        await self._connected()
        cfg = self.cfg
        plans = plan_segments(
            valid.shard,
            valid.rows,
            cfg.segment_rows,
            cfg.batch_rows,
            segment_bytes=cfg.segment_bytes,
            dim=valid.schema.dim,
            text_bytes=valid.text_bytes,
        )
        cut = plans[0].cut if plans else cfg.segment_rows
        done = self.ledger.done_segments(valid.shard, valid.rows, cut)
        self.ledger.start_shard(valid.shard, valid.rows, cut)  # keeps `done` when the cut matches
        todo = [p for p in plans if p.index not in done]
        already = sum(valid.expected_rows(p) for p in plans if p.index in done)
        self.reporter.shard_started(valid.shard, valid.rows - len(valid.drop_rows), already)
        job = _ShardJob(valid=valid, remaining=len(todo))
        if not todo:
            await self._complete(job)
            return
        for seg in todo:
            if self.stop.is_set() or job.failed:
                break
            await segments.put((job, seg))
            metrics.QUEUE_DEPTH.set(segments.qsize())

    def _read(self, valid: ValidShard, seg: SegmentPlan) -> SegmentRead:
        """Start reading the segment's pieces (row blocks, or one column-major block for a sink that takes it) on
        the read pool into a queue of `queue_depth // workers` pieces."""
        columns = isinstance(self.sink, TakesColumns) and self.sink.column_major
        reader = read_segment_columns(valid, seg, self._windows) if columns else read_segment(valid, seg)
        depth = self.cfg.queue_depth // self._workers
        return SegmentRead(gated(reader, valid.settle), self._read_pool, depth, valid.shard)

    async def _fail_midway(self, job: _ShardJob, exc: BadShardError) -> None:
        """A shard broke while streaming: wait for its other in-flight segments, delete what landed, quarantine."""
        if job.failed:
            return
        job.failed = True
        while job.active > 1:
            await asyncio.sleep(0.05)
        shard = job.valid.shard
        await self.sink.delete_range(self.table, shard * ID_STRIDE, (shard + 1) * ID_STRIDE - 1)
        await self._quarantine(shard, exc)

    # -- stage 3: insert ------------------------------------------------------------------------------------
    async def _insert_worker(self, segments: _Segments) -> None:
        landing = await self._connected()
        ahead = asyncio.create_task(self._take(segments, None, landing))
        try:
            while (taken := await ahead) is not None:
                started = taken.started
                # the next segment is taken, its read opened and its range counted, once this one is all read
                ahead = asyncio.create_task(self._take(segments, started.read if started else None, landing))
                if started is None:
                    continue  # not started (shard failed, or stopping): the next run lands it
                try:
                    await self._land(landing, taken.job, taken.seg, started)
                finally:
                    await started.close()
        finally:
            await stopped(ahead)
            left = None if ahead.cancelled() or ahead.exception() else ahead.result()
            if left is not None and left.started is not None:
                await left.started.close()  # taken, never landed

    async def _take(self, segments: _Segments, after: SegmentRead | None, landing: Landing) -> _Taken | None:
        """The next segment and what is started of it (None: not to be started), once `after` is read; None at
        the end."""
        if after is not None:
            await after.read()
        if (item := await segments.get()) is _DONE:
            return None
        job, seg = item
        metrics.QUEUE_DEPTH.set(segments.qsize())
        if self._held_back(job):
            return _Taken(job, seg, None)
        return _Taken(job, seg, _Started(self._read(job.valid, seg), asyncio.create_task(landing.settled_count(seg))))

    def _held_back(self, job: _ShardJob) -> bool:
        """A segment not to start: its shard failed, or the run is stopping (the next run lands it)."""
        return job.failed or self.stop.is_set()

    async def _land(self, landing: Landing, job: _ShardJob, seg: SegmentPlan, started: _Started) -> None:
        if self._held_back(job):  # again: the shard may have failed, or a stop come, since the read was opened
            return
        job.active += 1
        reads = iter([started.read])

        def open_blocks() -> AsyncGenerator[Piece, None]:
            """The read opened ahead for the first attempt; a fresh one for every retry."""
            return (next(reads, None) or self._read(job.valid, seg)).pieces()

        try:
            expected = job.valid.expected_rows(seg)
            t = time.monotonic()
            inserted = await landing.land(seg, expected, open_blocks, started.counted)
            metrics.BATCH_INSERT_SECONDS.observe(time.monotonic() - t)
            metrics.ROWS_INSERTED.inc(inserted)
            self.result.rows_inserted += inserted
            self.result.rows_already += expected - inserted
            self.ledger.mark_segment(seg.shard, seg.index)
            self.reporter.rows_landed(seg.shard, expected)
            job.remaining -= 1
            if job.remaining == 0 and not job.failed:
                await self._complete(job)
        except BadShardError as exc:
            await self._fail_midway(job, exc)
        finally:
            job.active -= 1

    async def _complete(self, job: _ShardJob) -> None:
        shard = job.valid.shard
        self.ledger.complete_shard(shard)
        self.result.shards_done.append(shard)
        metrics.SHARDS.labels(status="done").inc()
        self.reporter.shard_done(shard)
        await self.source.release(shard)

    async def _quarantine(self, shard: int, exc: BadShardError) -> None:
        await self._connected()
        self.result.shards_bad[shard] = str(exc)
        self.ledger.quarantine(shard, exc.reason)
        metrics.SHARDS.labels(status="quarantined").inc()
        self.reporter.shard_bad(shard, str(exc))
