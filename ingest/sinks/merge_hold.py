"""`--merges deferred` (the default of a `run` into one server or the embedded target): a table's background
merges held while a run loads it, and given back.

Background merges of the fresh ~250 MB parts rewrite a shard while it loads: on chdb about half the load's CPU;
on a 26.9 server 8.2–8.6 CPU-seconds of a 1M-row load, against 3.4–3.7 for curl's one POST of the same rows,
whose merges mostly run after it ends (bench/cpu26.py). `index` merges the table again before it builds anyway.

The stop is `SYSTEM STOP MERGES` on the table. In the embedded engine it lives in this process; on a server it
outlives us, so a killed run would leave the table unmerged. Hence: past `limit` active parts merges resume for
the rest of the run (a server delays inserts at `parts_to_delay_insert`, 150 on 18.16, 1,000 on 26.9), a mutation
(the landing's delete of a torn range) runs with them resumed (it runs in the merge pool), the sink's `close`
resumes them, and on a server `heal` resumes them when a run, the daemon or `index` opens the table (what a killed
run left stopped). A server that does not let this user run SYSTEM refuses the stop (or read the settings and
parts it is bounded by): the load goes on with merges, said at info level (the stop only saves CPU; nothing
depends on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ingest.clickhouse.sql import active_parts_sql, background_merges_sql, delay_parts_sql
from ingest.core.errors import TargetError
from ingest.core.ids import TableRef
from ingest.core.tasks import stopped

log = logging.getLogger(__name__)

MAX_DEFERRED_PARTS = 300
"""Active parts a table may gather while its merges wait for the end of a run; past it merges resume (chdb 26.9
delays inserts at 1,000 parts in a partition and refuses them at 3,000). A server's own delay threshold, halved,
caps it (18.16: 150)."""

Execute = Callable[[str], Awaitable[None]]
Query = Callable[[str], Awaitable[list[dict[str, Any]]]]


class MergeHold:
    """Which tables' merges this run stopped; the sink calls it around inserts, mutations and close (all no-ops
    when not `enabled`: the `during` policy)."""

    def __init__(self, execute: Execute, query: Query, enabled: bool = True, limit: int = MAX_DEFERRED_PARTS) -> None:
        self._execute = execute
        self._query = query
        self.enabled = enabled
        self.limit = limit
        self._seen: set[TableRef] = set()
        self._stopped: set[TableRef] = set()

    @property
    def stopped(self) -> frozenset[TableRef]:
        return frozenset(self._stopped)

    @contextlib.asynccontextmanager
    async def inserting(self, ref: TableRef) -> AsyncIterator[None]:
        """Around one insert into `ref`: the first stops the table's merges before it starts; each later one counts
        the table's parts while it runs (not in the gap between a connection's two INSERTs) and, once it landed,
        resumes the merges if the table holds over `limit`. A failed insert leaves the count to the next one."""
        if not self.enabled:
            yield
            return
        if ref not in self._seen:
            self._seen.add(ref)
            try:
                self.limit = await self._server_limit(self.limit)
                await self._stop(ref)
            except TargetError as exc:
                log.info("%s: background merges go on during the load (holding them failed: %s)", ref.key, exc)
            yield
            return
        if ref not in self._stopped:
            yield
            return
        over = asyncio.create_task(self._over_limit(ref))
        try:
            yield
        except BaseException:
            await stopped(over)
            raise
        if await over and ref in self._stopped:
            log.info("%s: over %d parts or uncounted, background merges resume", ref.key, self.limit)
            await self._resume(ref)

    async def _over_limit(self, ref: TableRef) -> bool:
        """The table holds more than `limit` parts, or they cannot be counted (the bound cannot be watched: the
        merges are given back)."""
        try:
            return await self._parts(ref) > self.limit
        except TargetError as exc:
            log.info("%s: counting its parts failed (%s)", ref.key, exc)
            return True

    @contextlib.asynccontextmanager
    async def lifted(self, ref: TableRef) -> AsyncIterator[None]:
        """Merges running for the duration: a mutation waits for the merge pool, which a stop holds forever."""
        held = ref in self._stopped
        if held:
            await self._resume(ref)
        try:
            yield
        finally:
            if held:
                await self._stop(ref)

    async def release(self) -> None:
        """Resume every table this run stopped, saying how many parts each holds."""
        for ref in sorted(self._stopped, key=lambda r: r.key):
            try:
                parts = await self._parts(ref)
                await self._resume(ref)
            except TargetError as exc:
                log.warning("%s: resuming background merges failed: %s", ref.key, exc)
                continue
            log.info("%s: %d parts; merges were deferred during the load and resume now", ref.key, parts)

    async def _stop(self, ref: TableRef) -> None:
        await self._execute(background_merges_sql(ref, run=False))
        self._stopped.add(ref)

    async def _resume(self, ref: TableRef) -> None:
        await self._execute(background_merges_sql(ref, run=True))
        self._stopped.discard(ref)

    async def _parts(self, ref: TableRef) -> int:
        return int((await self._query(active_parts_sql(ref)))[0]["n"])

    async def _server_limit(self, limit: int) -> int:
        rows = await self._query(delay_parts_sql())
        delay = int(rows[0]["value"]) if rows else 0
        return min(limit, delay // 2) if delay > 0 else limit


@contextlib.asynccontextmanager
async def paused(execute: Execute, ref: TableRef) -> AsyncIterator[None]:
    """The table's merges stopped for the duration, then resumed (a refused resume is not an error)."""
    await execute(background_merges_sql(ref, run=False))
    try:
        yield
    finally:
        with contextlib.suppress(TargetError):
            await execute(background_merges_sql(ref, run=True))


async def heal(execute: Execute, ref: TableRef) -> bool:
    """Resume the table's merges on a server (what a killed `--merges deferred` run left stopped): idempotent.
    False where the server refuses it (a user without the SYSTEM privilege), which is not an error for a load."""
    try:
        await execute(background_merges_sql(ref, run=True))
    except TargetError as exc:
        log.debug("%s: SYSTEM START MERGES refused (%s)", ref.key, exc)
        return False
    return True
