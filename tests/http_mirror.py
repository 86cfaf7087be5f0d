"""A loopback HTTP mirror over a directory, with faults on demand: the test stand-in for LAION's server.

Plain `http.server` in a background thread (not aiohttp, the library under test): GET with Range (206 +
Content-Range, 416), HEAD, directory listings like `python -m http.server`, and injected faults per path
pattern (fnmatch on the URL path): an HTTP status N times, a body cut halfway then the connection dropped,
a body always short of its Content-Length, Range ignored. Every request is recorded so tests can check
what the client asked for.
"""

from __future__ import annotations

import contextlib
import fnmatch
import html
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

CHUNK = 1 << 20
DROP_PAUSE = 0.3
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Seen:
    """One request as the server saw it; `range_start` is the N of `Range: bytes=N-` (None without Range)."""

    method: str
    path: str
    range_start: int | None
    status: int
    query: str = ""


@dataclass
class _Fault:
    pattern: str
    times: int | None  # None: forever
    status: int = 0  # answer this status instead of the file
    cut_fraction: float = 0.0  # send this fraction of the body, then drop the connection
    short_bytes: int = 0  # send all but this many bytes of the body, then drop the connection
    used: int = 0

    def takes(self, path: str) -> bool:
        return fnmatch.fnmatchcase(path, self.pattern) and (self.times is None or self.used < self.times)


@dataclass
class _State:
    root: Path
    faults: list[_Fault] = field(default_factory=list)
    ignore_range: bool = False
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_fault(self, method: str, path: str) -> _Fault | None:
        """The first matching fault for this request (HEAD only takes status faults), counted as used."""
        with self.lock:
            for f in self.faults:
                if method == "HEAD" and not f.status:
                    continue
                if f.takes(path):
                    f.used += 1
                    return f
        return None


class HttpMirror:
    """`with HttpMirror(root) as m:` serves `root` at `m.url` (http://127.0.0.1:PORT/)."""

    def __init__(self, root: Path) -> None:
        self.state = _State(root=root)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> HttpMirror:
        state = self.state

        class Handler(_Handler):
            pass

        Handler.state = state
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-mirror", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HttpMirror:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "mirror not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Root URL with a trailing slash."""
        return f"http://127.0.0.1:{self.port}/"

    # -- faults ---------------------------------------------------------------------------------------------
    def fail(self, pattern: str, status: int, times: int | None = None) -> None:
        """Answer `status` (no body) to GET/HEAD of paths matching `pattern`, `times` times (None: always)."""
        self._add(_Fault(pattern, times, status=status))

    def drop_midway(self, pattern: str, times: int = 1, fraction: float = 0.5) -> None:
        """The first `times` GETs send `fraction` of their body, stall DROP_PAUSE s, then close the connection."""
        self._add(_Fault(pattern, times, cut_fraction=fraction))

    def short_body(self, pattern: str, missing: int, times: int | None = None) -> None:
        """GETs announce the full Content-Length but send `missing` bytes fewer, then close the connection."""
        self._add(_Fault(pattern, times, short_bytes=missing))

    def set_ignore_range(self, value: bool = True) -> None:
        """Answer 200 with the whole file even when asked for a range (as some servers do)."""
        self.state.ignore_range = value

    def _add(self, fault: _Fault) -> None:
        with self.state.lock:
            self.state.faults.append(fault)

    # -- what was asked -------------------------------------------------------------------------------------
    @property
    def seen(self) -> list[Seen]:
        with self.state.lock:
            return list(self.state.seen)

    def requests(self, path: str, method: str = "GET") -> list[Seen]:
        return [s for s in self.seen if s.path == path and s.method == method]

    def count(self, path: str, method: str = "GET") -> int:
        return len(self.requests(path, method))

    def range_starts(self, path: str) -> list[int | None]:
        """The Range offset of each GET of `path`, in order (None for a plain GET)."""
        return [s.range_start for s in self.requests(path)]


class _Handler(BaseHTTPRequestHandler):
    state: _State
    protocol_version = "HTTP/1.1"  # keep-alive, like a real mirror: the client reuses connections

    def log_message(self, format: str, *args: object) -> None:
        return None

    def handle(self) -> None:
        """A client that hangs up mid-body (it gave up, or a test cancelled it) is no server error."""
        with contextlib.suppress(ConnectionError):
            super().handle()

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _record(self, path: str, query: str, range_start: int | None, status: int) -> None:
        with self.state.lock:
            self.state.seen.append(Seen(self.command, path, range_start, status, query))

    def _serve(self, head: bool) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        m = _RANGE.match(self.headers.get("Range", "").strip())
        range_start = int(m.group(1)) if m else None
        fault = self.state.take_fault(self.command, path)
        if fault is not None and fault.status:
            self._record(path, parts.query, range_start, fault.status)
            self._empty(fault.status)
            return
        target = (self.state.root / path.lstrip("/")).resolve()
        if not target.is_relative_to(self.state.root.resolve()):
            self._record(path, parts.query, range_start, 403)
            self._empty(403)
            return
        if target.is_dir():
            self._listing(target, path, parts.query, range_start, head)
            return
        if not target.is_file():
            self._record(path, parts.query, range_start, 404)
            self._empty(404)
            return
        size = target.stat().st_size
        start, status = 0, 200
        if m and not self.state.ignore_range:
            start = int(m.group(1))
            if start >= size:
                self._record(path, parts.query, range_start, 416)
                self._empty(416, {"Content-Range": f"bytes */{size}"})
                return
            status = 206
        self._record(path, parts.query, range_start, status)
        length = size - start
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        if head:
            return
        send = length
        if fault is not None and fault.cut_fraction:
            send = int(length * fault.cut_fraction)
        elif fault is not None and fault.short_bytes:
            send = max(0, length - fault.short_bytes)
        self._send_file(target, start, send)
        if send < length:
            if fault is not None and fault.cut_fraction:
                time.sleep(DROP_PAUSE)  # a stalled link dies: the client has read what it got before the cut
            self._drop()

    def _send_file(self, path: Path, start: int, count: int) -> None:
        with path.open("rb") as f:
            f.seek(start)
            left = count
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)
        self.wfile.flush()

    def _drop(self) -> None:
        """Close the connection mid-body, as a dying server or a cut link does."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _listing(self, target: Path, path: str, query: str, range_start: int | None, head: bool) -> None:
        """An HTML index like `python -m http.server` writes."""
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in target.iterdir())
        items = "".join(f'<li><a href="{html.escape(n)}">{html.escape(n)}</a></li>\n' for n in names)
        title = f"Directory listing for {html.escape(path)}"
        body = f"<!DOCTYPE HTML>\n<html><body><h1>{title}</h1>\n<ul>\n{items}</ul></body></html>\n"
        data = body.encode()
        self._record(path, query, range_start, 200)
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)
