"""An insert body for the embedded engine: Native blocks streamed through a named pipe.

chdb reads `INSERT … FROM INFILE 'fifo' FORMAT Native` from the pipe on its own thread, without the GIL, while
we encode the next block: the engine parses at its own speed and our process holds a block or two, where
`SELECT * FROM Python(table)` needed the segment gathered whole and read it under the GIL. Measured on a 1M-row
shard with merges stopped: one stream, 15.2 s through the pipe against 15.6 s through `Python()` (about even: the
engine's insert is the bound); two streams from two sessions through pipes, 8.5 s.

A pipe closed between two blocks is a clean end of data, which would commit the blocks before it: so every path
that does not finish the body (a failed read or encode, a cancelled insert) writes an unparsable block first,
and the engine fails the INSERT, discarding what it squashed. The blocks are read and encoded by the insert's body
pump (ingest/sinks/body_pump.py), one block ahead of the pipe writer, never by the writer itself.

A kill of the process takes the engine with it: unlike a server, no INSERT of a dead run can still be running
when the next run counts a segment's range, so the embedded target needs no wait for one (see Landing).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Executor
from pathlib import Path

import pyarrow as pa

from ingest.clickhouse.wire import ABORT_BLOCK, encode_piece
from ingest.core.errors import ConfigError, TargetError
from ingest.core.pieces import Piece

PIPE_BYTES = 1 << 20
"""Pipe buffer asked for (Linux's default unprivileged maximum): fewer wake-ups per block than the 64 KiB default."""
F_SETPIPE_SZ = 1031


@contextlib.contextmanager
def fifo_path() -> Iterator[Path]:
    """A fresh named pipe in a private temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="laion-ingest-") as tmp:
        path = Path(tmp) / "segment.native"
        try:
            os.mkfifo(path, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot make a named pipe in {tmp} for the embedded insert ({exc.strerror}); set TMPDIR elsewhere"
            ) from None
        yield path


def _write_all(fd: int, parts: list[memoryview] | list[bytes]) -> None:
    for part in parts:
        view = memoryview(part).cast("B")
        while view.nbytes:
            view = view[os.write(fd, view) :]


async def _open_writer(path: Path, statement: asyncio.Future[None]) -> int | None:
    """Our end of the pipe once the engine has opened its end; None when the statement ended without opening it
    (it failed first). Opened non-blocking and polled, so no thread ever waits in open() for a reader that will
    not come; then made blocking for the writes."""
    delay = 0.001
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            if statement.done():
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
            continue
        os.set_blocking(fd, True)
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
        return fd


async def encoded_blocks(blocks: AsyncIterator[Piece], pool: Executor, what: str) -> AsyncIterator[list[memoryview]]:
    """The body's pieces: each block as Native buffers, encoded on `pool` (the insert's pump iterates this)."""
    loop = asyncio.get_running_loop()
    async for batch in blocks:
        if isinstance(batch, pa.RecordBatch) and batch.num_rows == 0:
            continue
        try:
            yield await loop.run_in_executor(pool, encode_piece, batch, "native")
        except (ValueError, pa.ArrowException) as exc:
            raise TargetError(f"cannot encode batch for {what}: {exc}") from None


async def feed_fifo(
    path: Path, pieces: AsyncIterator[list[memoryview]], statement: asyncio.Future[None], pool: Executor
) -> None:
    """Write the encoded `pieces` into the pipe the running `statement` reads; return once the body is complete.

    `pieces` is the feed of a body pump (ingest/sinks/body_pump.py): when it stops early (its source failed, the
    insert was cancelled) it raises, and an unparsable block goes into the pipe first, so the statement fails and
    commits nothing. Returns early, writing nothing more, when the statement ended on its own (its error is the
    caller's).
    """
    loop = asyncio.get_running_loop()
    fd = await _open_writer(path, statement)
    if fd is None:
        return
    finished = False
    writing: asyncio.Future[None] | None = None
    try:
        async for parts in pieces:
            writing = loop.run_in_executor(pool, _write_all, fd, parts)
            await writing
        finished = True
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise TargetError(f"writing the insert body into the engine's pipe failed: {exc.strerror}") from None
        return  # the engine stopped reading: the statement failed, and says why
    finally:
        if not finished:  # after the write in flight (a cancel does not stop its thread), never beside it
            if writing is not None:
                await asyncio.shield(_settled(writing))
            await asyncio.shield(loop.run_in_executor(pool, _abort, fd))
        os.close(fd)


async def _settled(fut: asyncio.Future[None]) -> None:
    with contextlib.suppress(BaseException):
        await fut


def _abort(fd: int) -> None:
    with contextlib.suppress(OSError):
        _write_all(fd, [ABORT_BLOCK])


async def abort_statement(path: Path, statement: asyncio.Future[None]) -> None:
    """After a body that did not finish, however far it got: an unparsable block in the pipe, both ends held
    (O_RDWR never waits) until the statement ends. A statement whose engine had not opened its end yet would
    otherwise open it later and wait in open() for a writer for ever (a run stopped with no drain time hung so:
    cancelled before the pipe was opened, its insert thread kept the process up). It opens, reads the block,
    fails and commits nothing; one that ended already is only waited for."""
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    try:
        _abort(fd)  # one small block into a pipe nobody else writes: it fits the buffer, the write cannot wait
        await _settled(statement)
    finally:
        os.close(fd)
