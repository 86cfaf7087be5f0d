"""The one retry policy: capped exponential backoff with full jitter, and the loop that applies it.

Whether an error is worth retrying is a property of its class (`IngestError.retriable`); how long to wait and how
often to try is this module's. Every network peer (source downloads, target inserts, the daemon's connect) uses
`retrying`, so the policy lives in one place, as aiokafka's Sender keeps its own.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from ingest.core.errors import IngestError

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 8
    max_seconds: float = 30.0
    """Cap of one wait."""
    base_seconds: float = 0.25

    def delay(self, attempt: int) -> float:
        return backoff_seconds(attempt, self.max_seconds, self.base_seconds)


def backoff_seconds(attempt: int, cap: float, base: float = 0.25) -> float:
    """Capped exponential backoff with full jitter (attempt starts at 1)."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


async def retrying(
    policy: RetryPolicy,
    call: Callable[[], Awaitable[T]],
    what: str,
    log: logging.Logger,
    on_retry: Callable[[IngestError, int], str] | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """Await `call()` until it succeeds, raises a non-retriable error, or the policy runs out of attempts.

    An error may carry `retry_after` (seconds a server asked us to wait): the wait is at least that, within the
    cap. `on_retry(error, attempt)` runs before each wait and may return a note for the log line; `sleep` lets a
    caller make the wait interruptible.
    """
    attempt = 0
    while True:
        try:
            return await call()
        except IngestError as exc:
            if not exc.retriable or attempt >= policy.max_retries:
                raise
            attempt += 1
            note = on_retry(exc, attempt) if on_retry is not None else ""
            wait = policy.delay(attempt)
            hint = getattr(exc, "retry_after", None)
            if isinstance(hint, int | float):
                wait = min(max(wait, float(hint)), policy.max_seconds)
            log.warning("%s: %s; retry %d/%d in %.1f s%s", what, exc, attempt, policy.max_retries, wait, note)
            await sleep(wait)
