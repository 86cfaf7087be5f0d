"""HTTP insert body compression, pure: which encoding a server gets, and the bytes of it.

Three encodings, chosen by `plan_compression(method, server version, loopback)`:

- `frames`: ClickHouse's own compressed-block framing, read by the server with `?decompress=1` (every version,
  18.16 included). Per block: CityHash128 (v1.0.2) of the rest (16 bytes, high half first), method byte
  (0x90 ZSTD), u32 LE size of header + data (header = 9 bytes), u32 LE uncompressed size, then the zstd frame.
  Blocks need not line up with Native blocks: the server reads the body as one continuous decompressed stream.
- `zstd-stream`: `Content-Encoding: zstd`, one zstd stream (servers ≥ 21.1).
- `gzip`: `Content-Encoding: gzip`, one gzip stream (every version; ~13× slower to compress than zstd-1).

`auto` is no compression on loopback (the CPU costs more than the bytes) and zstd elsewhere.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Literal, Protocol

import zstandard
from clickhouse_cityhash.cityhash import CityHash128

from ingest.core.config import Compression

METHOD_LZ4 = 0x82
METHOD_ZSTD = 0x90
HEADER_BYTES = 9
CHECKSUM_BYTES = 16
FRAME_INPUT_BYTES = 1 << 20
"""Uncompressed bytes per frame: big enough to compress well, small enough to stream."""
MAX_FRAME_BYTES = 0x40000000
"""ClickHouse refuses a compressed block over 1 GiB."""
ZSTD_LEVEL = 1
GZIP_LEVEL = 1
ZSTD_CONTENT_ENCODING_SINCE = (21, 1)

Encoding = Literal["none", "frames", "zstd-stream", "gzip"]
Chunk = bytes | bytearray | memoryview


class ChunkEncoder(Protocol):
    """A stateful per-body transform: feed chunks in order, then `finish()` once."""

    def update(self, chunk: Chunk) -> bytes: ...

    def finish(self) -> bytes: ...


def checksum(data: Chunk) -> bytes:
    """CityHash128 v1.0.2 as ClickHouse writes it: the high 64 bits first, each little-endian."""
    h = CityHash128(bytes(data))
    return struct.pack("<QQ", (h >> 64) & 0xFFFFFFFFFFFFFFFF, h & 0xFFFFFFFFFFFFFFFF)


def frame(raw: Chunk, compressor: zstandard.ZstdCompressor | None = None) -> bytes:
    """One ClickHouse compressed block holding `raw` (zstd; pass a compressor to reuse its context)."""
    data = (compressor or zstandard.ZstdCompressor(level=ZSTD_LEVEL)).compress(raw)
    size = HEADER_BYTES + len(data)
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"compressed block of {size} bytes exceeds ClickHouse's 1 GiB limit")
    body = struct.pack("<BII", METHOD_ZSTD, size, len(raw)) + data
    return checksum(body) + body


def unframe(data: Chunk) -> Iterator[bytes]:
    """Decode a sequence of ClickHouse compressed blocks (checksums verified); for tests and diagnostics."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        if len(view) - pos < CHECKSUM_BYTES + HEADER_BYTES:
            raise ValueError(f"truncated block header at byte {pos}")
        method, size, raw_size = struct.unpack_from("<BII", view, pos + CHECKSUM_BYTES)
        end = pos + CHECKSUM_BYTES + size
        if size < HEADER_BYTES or end > len(view):
            raise ValueError(f"block at byte {pos} claims {size} bytes, {len(view) - pos - CHECKSUM_BYTES} left")
        body = view[pos + CHECKSUM_BYTES : end]
        if checksum(body) != bytes(view[pos : pos + CHECKSUM_BYTES]):
            raise ValueError(f"checksum mismatch in block at byte {pos}")
        if method != METHOD_ZSTD:
            raise ValueError(f"block at byte {pos} uses method {method:#x}, not ZSTD")
        raw = zstandard.ZstdDecompressor().decompress(body[HEADER_BYTES:], max_output_size=raw_size)
        if len(raw) != raw_size:
            raise ValueError(f"block at byte {pos} decompressed to {len(raw)} bytes, header says {raw_size}")
        yield raw
        pos = end


class _Identity:
    def update(self, chunk: Chunk) -> bytes:
        return bytes(chunk)

    def finish(self) -> bytes:
        return b""


class _Frames:
    """Coalesces input to FRAME_INPUT_BYTES, then emits one compressed block per full buffer."""

    def __init__(self, frame_bytes: int = FRAME_INPUT_BYTES) -> None:
        self._buf = bytearray()
        self._size = frame_bytes
        self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL)

    def update(self, chunk: Chunk) -> bytes:
        self._buf += chunk
        if len(self._buf) < self._size:
            return b""
        out = []
        view = memoryview(self._buf)
        whole = len(view) - len(view) % self._size
        for start in range(0, whole, self._size):
            out.append(frame(view[start : start + self._size], self._zstd))
        rest = bytes(view[whole:])
        view.release()
        self._buf = bytearray(rest)
        return b"".join(out)

    def finish(self) -> bytes:
        out = frame(self._buf, self._zstd) if self._buf else b""
        self._buf = bytearray()
        return out


class _ZstdStream:
    def __init__(self) -> None:
        self._c = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()

    def update(self, chunk: Chunk) -> bytes:
        return self._c.compress(chunk)

    def finish(self) -> bytes:
        return self._c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


class _Gzip:
    def __init__(self) -> None:
        self._c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # wbits 31: gzip header and trailer

    def update(self, chunk: Chunk) -> bytes:
        return self._c.compress(chunk)

    def finish(self) -> bytes:
        return self._c.flush(zlib.Z_FINISH)


_ENCODERS: dict[Encoding, Callable[[], ChunkEncoder]] = {
    "none": _Identity,
    "frames": _Frames,
    "zstd-stream": _ZstdStream,
    "gzip": _Gzip,
}


@dataclass(frozen=True, slots=True)
class BodyCodec:
    """How one insert body is sent: extra headers, extra URL parameters, and the transform of its bytes."""

    encoding: Encoding
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str | int] = field(default_factory=dict)

    @property
    def identity(self) -> bool:
        return self.encoding == "none"

    def encoder(self) -> ChunkEncoder:
        """A fresh transform for one body."""
        return _ENCODERS[self.encoding]()


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback IP literal (no DNS lookup: this module does no I/O)."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def plan_compression(method: Compression, version: tuple[int, ...], loopback: bool) -> BodyCodec:
    """(method, server version, target on loopback?) → how to send insert bodies."""
    if method == "auto":
        method = "none" if loopback else "zstd"
    if method == "none":
        return BodyCodec("none")
    if method == "gzip":
        return BodyCodec("gzip", {"Content-Encoding": "gzip"})
    if version >= ZSTD_CONTENT_ENCODING_SINCE:
        return BodyCodec("zstd-stream", {"Content-Encoding": "zstd"})
    return BodyCodec("frames", params={"decompress": 1})


def encode_body(chunks: Iterable[Chunk], codec: BodyCodec) -> Iterator[bytes]:
    """The synchronous transform of a whole body (empty outputs skipped)."""
    enc = codec.encoder()
    for chunk in chunks:
        out = enc.update(chunk)
        if out:
            yield out
    tail = enc.finish()
    if tail:
        yield tail


Offload = Callable[[Callable[[], bytes]], Awaitable[bytes]]
"""Runs a compression step elsewhere (e.g. a thread pool: zstd and zlib release the GIL)."""


async def _inline(fn: Callable[[], bytes]) -> bytes:
    return fn()


async def compressed_body(
    body: AsyncIterator[memoryview | bytes],
    codec: BodyCodec,
    on_bytes: Callable[[int], None] | None = None,
    offload: Offload | None = None,
) -> AsyncIterator[memoryview]:
    """Wrap a streamed insert body: compress it per `codec` and report the bytes that go on the wire.

    Steps of one body run strictly in order (the encoders are stateful), each through `offload` if given.
    """
    run = offload or _inline
    enc = codec.encoder()
    async for chunk in body:
        out = memoryview(chunk) if codec.identity else memoryview(await run(partial(enc.update, chunk)))
        if out.nbytes:
            if on_bytes is not None:
                on_bytes(out.nbytes)
            yield out
    tail = b"" if codec.identity else await run(enc.finish)
    if tail:
        if on_bytes is not None:
            on_bytes(len(tail))
        yield memoryview(tail)


__all__ = [
    "BodyCodec",
    "ChunkEncoder",
    "checksum",
    "compressed_body",
    "encode_body",
    "frame",
    "is_loopback",
    "plan_compression",
    "unframe",
]
