"""A loopback listener for the test proxies that can be closed at any moment without stranding a connection.

Not asyncio.start_server: on Python 3.11 a connection accepted just before Server.close() fails to get its transport
(Server._attach asserts the server is still open), silently, and its socket stays open and unread until a garbage
collection. A run whose query went to such a socket waited its whole --read-timeout for a reply (CI, 2026-12-07,
tests/test_fault_proxy.py's refusal: 300 s). Here every accepted socket gets its streams at once, whatever
happened to the listener since.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Listener:
    """Listens on 127.0.0.1:`port` and runs `handler(reader, writer)` for every connection, until `close()`."""

    def __init__(self, port: int, handler: Handler) -> None:
        """Bind and listen (OSError if the port is taken); accepting starts on the running loop."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.sock = sock
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self._serving: set[asyncio.Task[None]] = set()
        """One task a connection (the loop keeps only weak references to tasks)."""
        self._loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop accepting and close the socket: connects are refused, and the kernel resets those it had queued.
        Connections already accepted go on."""
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def _accept(self) -> None:
        """Every connection the kernel has ready, each handed to its own task at once. A callback, not a task
        awaiting loop.sock_accept: cancelling that task could drop a socket it had just accepted, unclosed until a
        garbage collection, as start_server does."""
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. out of file descriptors: the next readiness tries again
            task = self._loop.create_task(self._serve(conn))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except OSError:
            conn.close()
            return
        await self._handler(reader, writer)
