"""An insert body produced by a task the insert owns, handed to the transport through a bounded queue.

A transport (aiohttp's writer task, the chdb pipe's writer) must never iterate the body's source itself. When the
transport fails (a server killed, a connection lost, an engine that stopped reading), its task can still be
suspended inside the source (awaiting a block read or the encoder pool) while the insert returns, and whoever
closes the source then closes a generator that is running (issue #19: "aclose(): asynchronous generator is already
running", exit 1 under CPU load). So one task, the pump, iterates the source and puts its pieces on a queue; the
transport only waits on the queue. `pumped()` cancels the pump AND waits for it before the insert returns or
raises, closing the source from the pump itself: nothing is inside the source after the insert.

A transport never sees a clean end of an unfinished body: when the pump stops early (its source failed, or it was
cancelled) the feed raises `BodyAbandoned` after the pieces already queued. When the source failed on its own (a
read or encode error) that failure is what `pumped()` raises: it is the cause, not the cut it made.

Memory: at most `depth` pieces wait in the queue (plus the one the transport holds and the one the pump makes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Generic, TypeVar

from ingest.core.tasks import stopped

T = TypeVar("T")


class BodyAbandoned(Exception):
    """The transport's side of a body whose pump stopped before its end: the transport must cut, not finish."""


class _End:
    __slots__ = ("complete",)

    def __init__(self, complete: bool) -> None:
        self.complete = complete


class Feed(Generic[T]):
    """What the transport iterates: the pump's pieces, then the end (or BodyAbandoned)."""

    def __init__(self, depth: int) -> None:
        self._slots = asyncio.Semaphore(max(1, depth))
        self._queue: asyncio.Queue[T | _End] = asyncio.Queue()  # bounded by the slots; the end needs no slot
        self.failure: Exception | None = None
        """The source's own error, if it failed."""

    async def _put(self, piece: T) -> None:
        await self._slots.acquire()
        self._queue.put_nowait(piece)

    def _end(self, complete: bool) -> None:
        self._queue.put_nowait(_End(complete))

    def __aiter__(self) -> Feed[T]:
        return self

    async def __anext__(self) -> T:
        item = await self._queue.get()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # every later call ends the same way
            if item.complete:
                raise StopAsyncIteration
            raise BodyAbandoned("the insert body stopped before its end")
        self._slots.release()
        return item


async def _pump(source: AsyncIterator[T], feed: Feed[T]) -> None:
    complete = False
    try:
        async for piece in source:
            await feed._put(piece)
        complete = True
    except Exception as exc:
        feed.failure = exc
    finally:
        feed._end(complete)
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()  # in the pump's own task: it is the only one that ever iterated the source


@contextlib.asynccontextmanager
async def pumped(source: AsyncIterator[T], depth: int = 2) -> AsyncGenerator[Feed[T], None]:
    """Run `source` in a pump task for the duration of the block; yields the feed the transport reads.

    On leaving (success, error or cancellation) the pump is cancelled and waited for; then, if the source failed
    on its own, that failure is raised in place of whatever the transport made of it.
    """
    feed: Feed[T] = Feed(depth)
    task = asyncio.create_task(_pump(source, feed))
    try:
        yield feed
    except Exception:
        await stopped(task)  # the pump keeps its source's failure in the feed, it never raises it
        if feed.failure is not None:
            raise feed.failure from None
        raise
    except BaseException:
        await stopped(task)
        raise
    await stopped(task)
    if feed.failure is not None:
        raise feed.failure from None
