"""Landing one segment exactly: count → insert | skip | delete + reinsert, under the one retry policy.

The target is the truth: a segment's id range is counted before it is inserted (the ledger did not list it as
done, so an earlier run may have landed it), and again after an uncertain failure, so a retry can neither
duplicate nor lose rows. A range holding some but not all of the segment's rows (a torn insert from a server that
did not squash, or a half-deleted range) is deleted and inserted again.

Dedup tokens (servers that have them): one deterministic token per segment, so a retried INSERT whose first try
did land is a no-op. A token the table remembers from rows since deleted would silently drop our re-insert, so
after a delete, and whenever the count after an insert disagrees, the segment is sent again with a fresh token.

A count is only true once no INSERT of the segment runs any more: a run killed after sending a segment's whole
body leaves its INSERT running on the server (squashing, writing the part), and a count then sees 0 rows and the
segment would land twice (issue #19). So every INSERT of a segment carries the segment's deterministic `query_id`
(SegmentPlan.query_id), each attempt first waits until no query with that id runs on the target (on every node
of a cluster), and a server that refuses a second query with the id of a running one (code 216) makes the attempt
fail as transient: it waits and counts again. The embedded target has no such window: a kill takes the engine
with it.

Every attempt re-reads the segment through `open_blocks()`: nothing buffers a segment to allow a retry.

The wait and the count a first attempt starts from may be asked ahead (`settled_count`, while the worker's previous
INSERT is still being written): nothing of this run writes the segment's range before its own INSERT, and a dead
run's INSERT is waited for all the same, so the answer holds when the attempt uses it. It takes two round trips off
the gap between a connection's INSERTs (~25 ms a segment on a busy 26.9 server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable

from ingest.core import metrics
from ingest.core.errors import IngestError, TargetError
from ingest.core.ids import TableRef
from ingest.core.pieces import Piece
from ingest.core.plan import SegmentPlan
from ingest.core.retry import RetryPolicy, retrying
from ingest.sinks.base import Sink

log = logging.getLogger(__name__)

VERIFY_RESENDS = 2
"""Fresh-token re-sends after a count that disagrees, before the segment is declared failed."""

BlockSource = Callable[[], AsyncGenerator[Piece, None]]
"""Opens a fresh stream of one segment's pieces (read from the shard files again on every call)."""


def fresh_token(token: str) -> str:
    """A token no earlier insert used: the old one may be remembered for rows deleted since."""
    return f"{token.split(':r', 1)[0]}:r{time.time_ns()}"


class Landing:
    """Lands segments on one table of one sink; `use_token` where the server deduplicates by token."""

    def __init__(
        self,
        sink: Sink,
        table: TableRef,
        retry: RetryPolicy,
        use_token: bool,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.sink = sink
        self.table = table
        self.retry = retry
        self.use_token = use_token
        self._sleep = sleep

    async def settled_count(self, segment: SegmentPlan) -> int:
        """Rows the segment's id range holds once no INSERT of it runs any more: what an attempt starts from."""
        await self.sink.wait_query_gone(segment.query_id(self.table.key))
        return await self.sink.count_range(self.table, segment.first_id, segment.last_id)

    async def land(
        self,
        segment: SegmentPlan,
        expected: int,
        open_blocks: BlockSource,
        counted: Awaitable[int] | None = None,
    ) -> int:
        """Make the segment's id range hold exactly its `expected` rows; returns rows inserted now (0 if they
        were already there). Retriable failures are retried (the range is counted again first); others raise.
        `counted`: `settled_count(segment)` asked ahead, for the first attempt."""
        state = _Attempt(segment.token(self.table.key) if self.use_token else None, counted)

        def on_retry(_exc: IngestError, _attempt: int) -> str:
            metrics.RETRIES.inc()
            return ""

        return await retrying(
            self.retry,
            lambda: self._attempt(segment, expected, open_blocks, state),
            f"shard {segment.shard} segment {segment.index}",
            log,
            on_retry=on_retry,
            sleep=self._sleep,
        )

    async def _attempt(self, segment: SegmentPlan, expected: int, open_blocks: BlockSource, state: _Attempt) -> int:
        sink, ref = self.sink, self.table
        # an INSERT of a dead run (or our last attempt) may still be writing: counted once it is gone
        first = state.counted or self.settled_count(segment)
        state.counted = None  # a retry waits and counts afresh
        inserted = False
        for sent in range(VERIFY_RESENDS + 2):
            have = await (first if sent == 0 else sink.count_range(ref, segment.first_id, segment.last_id))
            if have == expected:
                return expected if inserted else 0
            if sent > VERIFY_RESENDS:
                break
            if have:
                log.warning(
                    "shard %d segment %d: %d of %d rows present; replacing the range",
                    segment.shard,
                    segment.index,
                    have,
                    expected,
                )
                await sink.delete_range(ref, segment.first_id, segment.last_id)
            if state.token is not None and (have or inserted):
                # the old token may be remembered for rows deleted since: dedup would drop ours; send it fresh
                state.token = fresh_token(state.token)
            async with contextlib.aclosing(open_blocks()) as blocks:
                await sink.insert(ref, segment, blocks, state.token, segment.query_id(ref.key))
            inserted = True
            if state.token is None:
                return expected  # no token, no dedup: what the server acknowledged is there
        raise TargetError(
            f"shard {segment.shard} segment {segment.index}: id range does not hold {expected} rows after insert"
        )


class _Attempt:
    """What survives between attempts of one segment: the token in use, the count asked ahead (first attempt)."""

    def __init__(self, token: str | None, counted: Awaitable[int] | None) -> None:
        self.token = token
        self.counted = counted
