"""A loopback TCP relay in front of a ClickHouse server that records the head and first bytes of each request.

The servers here keep no query log (chdb's 26.9 server has no `system.query_log`), so what went over the wire —
the request line, `Content-Encoding`, the first bytes of a body — is read from a capture. The relay is plain
sockets and threads (not aiohttp, the library under test). `drop_insert_replies=N` hangs up on the first N
INSERTs after the server has answered them: the insert landed, the client saw a lost connection.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

_HEAD = re.compile(rb"(POST|GET) (/\S*) HTTP/1\.[01]\r\n(.*?)\r\n\r\n", re.S)


@dataclass
class Request:
    """One request head as sent, and the first bytes of its body."""

    method: str
    target: str
    headers: dict[str, str]
    body_start: bytes
    at: float = 0.0
    """When its first bytes arrived (monotonic): orders requests across connections."""

    @property
    def params(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.target).query).items()}

    @property
    def is_insert(self) -> bool:
        return self.params.get("query", "").lstrip().upper().startswith("INSERT")


_START = re.compile(rb"(?:POST|GET) /")
KEEP = 8192
"""Bytes kept from each request (its head and the start of its body): a capture of a big load stays small."""
TAIL = 512


@dataclass
class _Item:
    at: float
    data: bytearray


@dataclass
class _Conn:
    items: list[_Item] = field(default_factory=list)
    tail: bytes = b""
    """The last bytes seen: a request start split across two reads is still found."""
    insert_pending: bool = False

    def feed(self, data: bytes, now: float) -> None:
        buf = self.tail + data
        starts = [m.start() for m in _START.finditer(buf) if m.end() > len(self.tail)]
        first = starts[0] if starts else len(buf)
        if self.items and first > len(self.tail):  # the rest of the current request, up to the next one
            item = self.items[-1].data
            item += buf[len(self.tail) : first][: max(0, KEEP - len(item))]
        for i, s in enumerate(starts):
            stop = starts[i + 1] if i + 1 < len(starts) else len(buf)
            self.items.append(_Item(now, bytearray(buf[s:stop][:KEEP])))
        if starts:
            self.insert_pending = False
        if self.items and b"query=INSERT" in self.items[-1].data[:200]:
            self.insert_pending = True
        self.tail = buf[-TAIL:]


def _dechunked(raw: bytes) -> bytes:
    """The data of the chunks of a chunked body, as far as `raw` (a kept prefix) holds them."""
    out, pos = bytearray(), 0
    while True:
        end = raw.find(b"\r\n", pos)
        if end < 0 or not re.fullmatch(rb"[0-9a-fA-F]+", raw[pos:end]):
            return bytes(out)
        size = int(raw[pos:end], 16)
        out += raw[end + 2 : end + 2 + size]
        pos = end + 2 + size + 2
        if size == 0 or pos > len(raw):
            return bytes(out)


class Capture:
    """`with Capture(port) as cap:` relays 127.0.0.1:cap.port → 127.0.0.1:port; `cap.requests()` after."""

    def __init__(self, upstream_port: int, drop_insert_replies: int = 0) -> None:
        self.upstream = upstream_port
        self.drops_left = drop_insert_replies
        self.dropped = 0
        self._conns: list[_Conn] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Capture:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._stop.set()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=5)
        self._listener.close()
        for s in self._socks:
            s.close()

    def _spawn(self, fn: object, *args: object) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            conn = _Conn()
            with self._lock:
                self._conns.append(conn)
                self._socks += [client, upstream]
            self._spawn(self._pump, client, upstream, conn, True)
            self._spawn(self._pump, upstream, client, conn, False)

    def _pump(self, src: socket.socket, dst: socket.socket, conn: _Conn, to_server: bool) -> None:
        while True:
            try:
                data = src.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            if to_server:
                with self._lock:
                    conn.feed(data, time.monotonic())
            elif conn.insert_pending:
                with self._lock:
                    conn.insert_pending = False
                    drop = self.drops_left > 0
                    if drop:
                        self.drops_left -= 1
                        self.dropped += 1
                if drop:
                    break  # the server answered the insert; the client never hears it
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def requests(self, body_bytes: int = 64) -> list[Request]:
        """Every request seen, in the order they arrived, with up to `body_bytes` (at most KEEP) of its body."""
        out: list[Request] = []
        with self._lock:
            items = [(i.at, bytes(i.data)) for c in self._conns for i in c.items]
        for at, raw in items:
            m = _HEAD.match(raw)
            if m is None:
                continue  # a request head longer than KEEP: not ours
            headers = {}
            for line in m.group(3).split(b"\r\n"):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = raw[m.end() :]
            if headers.get("transfer-encoding", "").lower() == "chunked":
                body = _dechunked(body)
            body = body[:body_bytes]
            out.append(Request(m.group(1).decode(), m.group(2).decode("latin-1"), headers, body, at))
        return sorted(out, key=lambda r: r.at)

    def inserts(self, body_bytes: int = 64) -> list[Request]:
        return [r for r in self.requests(body_bytes) if r.is_insert]
