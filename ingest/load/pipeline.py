"""The stages wired together with bounded asyncio queues.

    fetch (download_concurrency) → ready shards → read + validate + batch (executor) → batch queue (queue_depth)
    → insert workers (insert_concurrency) → ledger

Memory is bounded by queue_depth × batch size whatever the shard size. Shutdown is ordered: on stop we take no
new shard, read no new batch, let the workers drain what is queued (up to drain_seconds), then flush the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa

from ingest.core import metrics
from ingest.core.config import RunConfig
from ingest.core.errors import BadShardError, IngestError, SourceError, TargetError, exception_leaves, first_error
from ingest.core.plan import ID_STRIDE, BatchPlan, plan_batches
from ingest.load.ledger import Ledger
from ingest.load.progress import Reporter
from ingest.sinks.base import Sink
from ingest.stages.shard import ShardFiles, ValidShard, read_batches, validate_shard
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
    queued: int = 0
    failed: bool = False


_DONE = None


class _DrainTimeout(Exception):
    """Raised by the watchdog when in-flight batches did not finish within drain_seconds."""


class Pipeline:
    def __init__(
        self,
        settings: RunConfig,
        sink: Sink,
        source: Source,
        ledger: Ledger,
        reporter: Reporter,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.cfg = settings.load
        self.table = settings.table
        self._schema = settings.target.schema
        self._fetchers = max(1, settings.source.download_concurrency)
        self.sink = sink
        self.source = source
        self.ledger = ledger
        self.reporter = reporter
        self.stop = stop or asyncio.Event()
        self.result = RunResult()
        self._read_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="read")
        self._use_token = False

    async def run(self, shards: list[int]) -> RunResult:
        """Load `shards` (finished ones are skipped); returns what happened. Fatal errors propagate."""
        t0 = time.monotonic()
        self._use_token = self.sink.info.dedup_token
        todo = [s for s in shards if not self.ledger.is_complete(s)]
        for s in shards:
            if self.ledger.is_complete(s):
                self.result.shards_done.append(s)
        ready: asyncio.Queue[ShardFiles | None] = asyncio.Queue(maxsize=self._fetchers)
        batches: asyncio.Queue[tuple[_ShardJob, BatchPlan, pa.RecordBatch] | None] = asyncio.Queue(
            maxsize=max(1, self.cfg.queue_depth)
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._fetch_all(todo, ready))
                tg.create_task(self._read_all(ready, batches))
                workers = [
                    tg.create_task(self._insert_worker(batches)) for _ in range(max(1, self.cfg.insert_concurrency))
                ]
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
                "drain timed out after %.0fs: abandoned in-flight batches (the next run reconciles them)",
                self.cfg.drain_seconds,
            )
        finally:
            self._read_pool.shutdown(wait=False, cancel_futures=True)
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
                self._quarantine(shard, exc if isinstance(exc, BadShardError) else BadShardError(shard, str(exc)))
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

    # -- stage 2: validate, plan, read ----------------------------------------------------------------------
    async def _read_all(
        self,
        ready: asyncio.Queue[ShardFiles | None],
        batches: asyncio.Queue[tuple[_ShardJob, BatchPlan, pa.RecordBatch] | None],
    ) -> None:
        loop = asyncio.get_running_loop()
        while (files := await ready.get()) is not _DONE:
            if self.stop.is_set():
                continue
            try:
                valid = await loop.run_in_executor(
                    self._read_pool, validate_shard, files, self._schema, self.cfg.on_nan
                )
            except BadShardError as exc:
                self._quarantine(files.shard, exc)
                continue
            await self._read_shard(valid, batches)
        for _ in range(max(1, self.cfg.insert_concurrency)):
            await batches.put(_DONE)

    async def _read_shard(
        self, valid: ValidShard, batches: asyncio.Queue[tuple[_ShardJob, BatchPlan, pa.RecordBatch] | None]
    ) -> None:
        loop = asyncio.get_running_loop()
        plans = plan_batches(valid.shard, valid.rows, self.cfg.batch_rows)
        done = self.ledger.done_batches(valid.shard, valid.rows, self.cfg.batch_rows)
        self.ledger.start_shard(valid.shard, valid.rows, self.cfg.batch_rows)  # keeps `done` when the cut matches
        todo = [p for p in plans if p.index not in done]
        already = sum(valid.expected_rows(p) for p in plans if p.index in done)
        self.reporter.shard_started(valid.shard, valid.rows - len(valid.drop_rows), already)
        job = _ShardJob(valid=valid, remaining=len(todo))
        if not todo:
            await self._complete(job)
            return
        gen = read_batches(valid, todo, self.cfg.batch_rows)
        try:
            while not self.stop.is_set():
                item = await loop.run_in_executor(self._read_pool, next, gen, None)
                if item is None:
                    break
                job.queued += 1
                await batches.put((job, *item))
                metrics.QUEUE_DEPTH.set(batches.qsize())
        except (OSError, pa.ArrowException) as exc:
            await self._fail_midway(job, f"shard {valid.shard}: read failed after validation ({exc})")
        finally:
            # close on the read thread: after a cancellation that thread may still be inside next(gen)
            with contextlib.suppress(RuntimeError):
                self._read_pool.submit(gen.close)

    async def _fail_midway(self, job: _ShardJob, reason: str) -> None:
        """A shard broke while streaming: wait for its in-flight batches, delete what landed, quarantine it."""
        job.failed = True
        while job.queued:
            await asyncio.sleep(0.05)
        shard = job.valid.shard
        await self.sink.delete_range(self.table, shard * ID_STRIDE, (shard + 1) * ID_STRIDE - 1)
        self._quarantine(shard, BadShardError(shard, reason.split(": ", 1)[-1]))

    # -- stage 3: insert ------------------------------------------------------------------------------------
    async def _insert_worker(self, batches: asyncio.Queue[tuple[_ShardJob, BatchPlan, pa.RecordBatch] | None]) -> None:
        while (item := await batches.get()) is not _DONE:
            job, plan, batch = item
            metrics.QUEUE_DEPTH.set(batches.qsize())
            try:
                if job.failed:
                    continue
                expected = job.valid.expected_rows(plan)
                t = time.monotonic()
                inserted = await self._land(plan, batch, expected)
                metrics.BATCH_INSERT_SECONDS.observe(time.monotonic() - t)
                metrics.ROWS_INSERTED.inc(inserted)
                self.result.rows_inserted += inserted
                self.result.rows_already += expected - inserted
                self.ledger.mark_batch(plan.shard, plan.index)
                self.reporter.rows_landed(plan.shard, expected)
                job.remaining -= 1
                if job.remaining == 0:
                    await self._complete(job)
            finally:
                job.queued -= 1

    async def _land(self, plan: BatchPlan, batch: pa.RecordBatch, expected: int) -> int:
        """Make the batch's id range hold exactly its rows; returns rows inserted now (0 if already there).

        The range is counted first (the ledger did not list it as done, so an earlier run may have landed it),
        and again after an uncertain failure, so a retry can neither duplicate nor lose rows.
        """
        ref = self.table
        token = plan.token(ref.key, self.cfg.batch_rows) if self._use_token else None
        attempt = verifies = 0
        while True:
            try:
                have = await self.sink.count_range(ref, plan.first_id, plan.last_id)
                if have == expected:
                    return 0
                if have:
                    log.warning(
                        "shard %d batch %d: %d of %d rows present; replacing the range",
                        plan.shard,
                        plan.index,
                        have,
                        expected,
                    )
                    await self.sink.delete_range(ref, plan.first_id, plan.last_id)
                    token = f"{token}:r{time.time_ns()}" if token else None  # the old token would dedup the re-insert
                await self.sink.insert(ref, batch, token)
                if token is not None and await self.sink.count_range(ref, plan.first_id, plan.last_id) != expected:
                    # a block with this token was inserted and deleted before: dedup dropped ours; send it fresh
                    verifies += 1
                    if verifies > 2:
                        raise TargetError(
                            f"shard {plan.shard} batch {plan.index}: id range does not hold "
                            f"{expected} rows after insert"
                        )
                    token = f"{token}:r{time.time_ns()}"
                    continue
                return expected
            except IngestError as exc:
                if not exc.retriable or attempt >= self.cfg.retry.max_retries:
                    raise
                attempt += 1
                metrics.RETRIES.inc()
                delay = self.cfg.retry.delay(attempt)
                log.warning(
                    "shard %d batch %d: %s; retry %d/%d in %.1fs",
                    plan.shard,
                    plan.index,
                    exc,
                    attempt,
                    self.cfg.retry.max_retries,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _complete(self, job: _ShardJob) -> None:
        shard = job.valid.shard
        self.ledger.complete_shard(shard)
        self.result.shards_done.append(shard)
        metrics.SHARDS.labels(status="done").inc()
        self.reporter.shard_done(shard)
        await self.source.release(shard)

    def _quarantine(self, shard: int, exc: BadShardError) -> None:
        self.result.shards_bad[shard] = str(exc)
        self.ledger.quarantine(shard, exc.reason)
        metrics.SHARDS.labels(status="quarantined").inc()
        self.reporter.shard_bad(shard, str(exc))
