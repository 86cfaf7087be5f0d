"""How long the daemon waits after a failed poll, and the wait itself: doubled per failed poll and capped, but
over as soon as a target that could not be reached answers again (a restarted server is loaded into at once, not
minutes later)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ingest.core.errors import IngestError

BACKOFF_CAP_SECONDS = 60.0
"""The longest wait between failed polls: after an outage a daemon polls again within a minute at the latest."""
PROBE_SECONDS = 2.0
"""How often a backoff after an unreachable target asks whether it answers again."""


def poll_wait(poll_seconds: float, failures: int, cap: float = BACKOFF_CAP_SECONDS) -> float:
    """Seconds until the next poll: the interval, doubled per consecutive failed poll, capped."""
    if failures <= 0:
        return poll_seconds
    return min(max(cap, poll_seconds), poll_seconds * (1 << min(failures, 30)))


async def back_off(
    seconds: float,
    sleep: Callable[[float], Awaitable[None]],
    answers: Callable[[], Awaitable[object]] | None,
    stopped: Callable[[], bool],
) -> None:
    """Sleep `seconds`; with `answers` (the last poll could not reach the target), probe it every PROBE_SECONDS
    and end the wait at the first answer."""
    if answers is None:
        await sleep(seconds)
        return
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while not stopped() and (left := end - loop.time()) > 0:
        await sleep(min(left, PROBE_SECONDS))
        try:
            await answers()
        except IngestError:
            continue
        return
