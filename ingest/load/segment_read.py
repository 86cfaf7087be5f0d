"""One segment's pieces, read on the read pool into a small queue from the moment the read is opened.

An insert worker opens the next segment's read as soon as the current one's pieces are all read, while the server
still writes the current part (~50 ms of a 61k-row segment's scalar columns decoded and its first window read,
once per segment per connection, that the connection otherwise idled for between two INSERTs).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Generator
from concurrent.futures import Executor

import pyarrow as pa

from ingest.core.errors import BadShardError
from ingest.core.pieces import Piece


class SegmentRead:
    """A generator of pieces driven on `pool` into a queue of `depth`; `pieces()` hands them out, `close()` stops
    it (the generator is never advanced after, nor while, it is closed)."""

    def __init__(self, pieces: Generator[Piece, None, None], pool: Executor, depth: int, shard: int) -> None:
        self._gen = pieces
        self._pool = pool
        self._shard = shard
        self._q: asyncio.Queue[Piece | Exception | None] = asyncio.Queue(maxsize=max(1, depth))
        self._closing = False
        self._task = asyncio.create_task(self._produce())

    async def _produce(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._closing:
                piece = await loop.run_in_executor(self._pool, next, self._gen, None)
                if self._closing:
                    return  # read while closing: nobody takes it
                await self._q.put(piece)
                if piece is None:
                    return
        except (OSError, pa.ArrowException, ValueError) as exc:
            await self._q.put(BadShardError(self._shard, f"read failed after validation ({exc})"))
        except Exception as exc:  # the scan's verdict (BadShardError) or a bug: it ends the insert, never hangs it
            await self._q.put(exc)

    async def read(self) -> None:
        """Return once every piece is read (queued or handed out), or the read failed or was closed."""
        await asyncio.wait({self._task})

    async def pieces(self) -> AsyncGenerator[Piece, None]:
        """The pieces in order; a read error is raised here. Closing this generator closes the read."""
        try:
            while (item := await self._q.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop reading: a read in progress finishes first (the generator must not run when closed). Idempotent.

        Emptying the queue once is enough: the one producer is either reading (it sees `_closing` after and puts
        nothing) or waiting to put one piece into a full queue (the put goes through, then it sees `_closing`)."""
        self._closing = True
        while not self._q.empty():
            self._q.get_nowait()
        await asyncio.wait({self._task})
        self._gen.close()
