"""A loopback TCP proxy that holds the end of one INSERT's body: the moment after a client sent a segment's last
byte and before the server answered, made deterministic (issue #19).

Everything is forwarded as it comes, except on the connection carrying the `hold`-th INSERT (counted from 1; the
next one if the server answers that one early, e.g. with an error): there the last 5 bytes of body received are
kept back (the headers go whole). When they are the chunked body's end (`0\\r\\n\\r\\n`), or the last bytes of
the `Content-Length` a body declared, the whole body has left the client and `held` is set. The test kills the
client then; the proxy keeps the server's side of the connection open, and on `release()` delivers the tail, so the
server finishes the INSERT the dead client started, as a server slowed by a big segment does. `answered` is set
when the server's reply to it comes back. Runs its own event loop
in a thread; `close()` stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading

from server_fixtures import free_ports

END = b"0\r\n\r\n"
LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.I)


class HoldProxy:
    def __init__(self, upstream_port: int, hold: int = 1) -> None:
        self.upstream_port = upstream_port
        self.port = free_ports(1)[0]
        self.hold = hold
        self.inserts = 0
        self._taken = False
        self.held = threading.Event()
        self.answered = threading.Event()
        self._release: asyncio.Event | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def release(self) -> None:
        """Deliver the held tail to the server (it then finishes the INSERT)."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: self._release.set() if self._release else None)

    def close(self) -> None:
        """Stop the proxy (idempotent)."""
        if not self._thread.is_alive():
            return
        self.release()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -- the loop -------------------------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._release = asyncio.Event()
        server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(server.wait_closed())
            self._loop.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        holding = asyncio.Event()
        up = asyncio.create_task(self._upstream(client_r, server_w, holding))
        down = asyncio.create_task(self._downstream(server_r, client_w, holding))
        await asyncio.wait({up, down}, return_when=asyncio.ALL_COMPLETED)
        for w in (client_w, server_w):
            with contextlib.suppress(Exception):
                w.close()

    async def _upstream(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, holding: asyncio.Event) -> None:
        tail = b""
        length: int | None = None  # body bytes still to come on a held body that declared its length
        with contextlib.suppress(OSError):
            while data := await src.read(1 << 16):
                head = b""
                if not holding.is_set() and data.startswith(b"POST /?query=INSERT"):
                    self.inserts += 1
                    if self.inserts >= self.hold and not self._taken:
                        self._taken = True
                        holding.set()
                        # the headers go whole: a server waits only seconds for a request's headers
                        split = data.find(b"\r\n\r\n") + 4
                        head, data = data[:split], data[split:]
                        declared = LENGTH.search(head)
                        length = int(declared.group(1)) if declared else None
                if not holding.is_set() and tail:
                    data, tail = tail + data, b""  # an early reply ended the hold: the rest flows
                if holding.is_set():
                    if length is not None:
                        length -= len(data)
                    data, tail = (tail + data)[:-5], (tail + data)[-5:]
                    if tail == END or length == 0:
                        self.held.set()
                dst.write(head + data)
                await dst.drain()
        if holding.is_set():
            assert self._release is not None
            await self._release.wait()  # the client is gone (or waits): the server gets the end only now
            with contextlib.suppress(OSError):
                dst.write(tail)
                await dst.drain()
            return
        with contextlib.suppress(OSError):
            dst.write_eof()

    async def _downstream(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, holding: asyncio.Event) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(1 << 16):
                if holding.is_set() and not self.held.is_set():
                    holding.clear()  # the server answered before the body's end (an error): hold the next INSERT
                    self._taken = False
                elif holding.is_set():
                    self.answered.set()
                with contextlib.suppress(OSError, RuntimeError):
                    dst.write(data)
                    await dst.drain()
                if holding.is_set():
                    return  # one reply is all we wait for on the held connection
