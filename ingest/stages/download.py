"""The HTTP source: a mirror in LAION's layout, downloaded shard by shard into a local cache.

Each file is streamed into `NAME.part` and renamed to `NAME` only once its size matches what the server
announced, so a file under its final name is always complete. A `.part` left by a dropped connection (or by an
earlier run) is resumed with `Range: bytes=N-`; a server that ignores Range restarts the file from byte 0.
aiohttp and OS exceptions are mapped into ingest.core.errors here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import aiofiles
import aiohttp

from ingest.core import metrics
from ingest.core.config import SourceConfig
from ingest.core.errors import ConfigError, MissingSourceFile, SourceError, TransientSourceError
from ingest.core.layout import LAION400M, Layout
from ingest.stages.cache import (
    CHUNK_BYTES,
    CachingSource,
    cache_error,
    drop_file,
    file_size,
    finish_part,
    human_bytes,
    part_path,
)

__all__ = ["human_bytes"]

log = logging.getLogger(__name__)
T = TypeVar("T")
HEAD_CONCURRENCY = 16
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
HEADERS = {"Accept-Encoding": "identity", "User-Agent": "laion-ingest"}
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)\s*/\s*(\d+|\*)\s*$", re.IGNORECASE)
_LISTED_NAME = re.compile(r"[A-Za-z0-9_.%-]+")
_URL_IN_TEXT = re.compile(r"https?://[^\s'\"<>()]+")


# -- pure helpers: URLs, headers, response planning ---------------------------------------------------------
def shard_relpaths(shard: int, layout: Layout = LAION400M) -> tuple[str, str, str]:
    """The three files of a shard, relative to the root (the same layout in the mirror and in the cache)."""
    return layout.relpaths(shard)


def check_root(root: str) -> None:
    """A mirror root must be an absolute http(s) URL with a host."""
    parts = urlsplit(root)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"source {display_url(root)!r} is not an http(s) URL with a host")


def join_url(root: str, rel: str) -> str:
    """`root` + `rel` whether or not root ends in '/'; a query on the root (a token) is kept on the file URL."""
    parts = urlsplit(root)
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urlunsplit((parts.scheme, parts.netloc, path + quote(rel.lstrip("/")), parts.query, ""))


def display_url(url: str) -> str:
    """A URL fit for logs and errors: no user:password, no query string (either may carry a token)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def range_header(offset: int) -> dict[str, str]:
    """Ask for the rest of a file from `offset` (nothing to ask at 0: a plain GET)."""
    if offset < 0:
        raise ValueError(f"negative offset {offset}")
    return {"Range": f"bytes={offset}-"} if offset else {}


@dataclass(frozen=True, slots=True)
class ContentRange:
    start: int | None  # None for `bytes */N` (the form of a 416)
    end: int | None
    total: int | None  # None for `bytes a-b/*`


def parse_content_range(value: str) -> ContentRange:
    """Parse `bytes a-b/N`, `bytes a-b/*` or `bytes */N`; ValueError on anything else."""
    m = _CONTENT_RANGE.match(value)
    if m is None:
        raise ValueError(f"bad Content-Range {value!r}")
    start = int(m.group(1)) if m.group(1) is not None else None
    end = int(m.group(2)) if m.group(2) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    if start is not None and end is not None and (end < start or (total is not None and end >= total)):
        raise ValueError(f"bad Content-Range {value!r}")
    return ContentRange(start, end, total)


@dataclass(frozen=True, slots=True)
class BodyPlan:
    """Where a response body goes in the .part file, and the file's full size when the server said it."""

    start: int
    total: int | None


def plan_body(status: int, offset: int, content_length: int | None, content_range: str | None) -> BodyPlan | None:
    """Decide how to use a 200/206 response to a request made at `offset`; None means 'restart from 0'.

    A 200 is the whole file whatever we asked (a server that ignores Range): write from 0. A 206 must start
    exactly where we asked, and its Content-Range total is the file size.
    """
    if status == 200:
        return BodyPlan(0, content_length)
    if status != 206:
        raise ValueError(f"no body plan for HTTP {status}")
    if content_range is None:
        return None
    try:
        cr = parse_content_range(content_range)
    except ValueError:
        return None
    if cr.start != offset:
        return None
    total = cr.total
    if total is None and content_length is not None:
        total = offset + content_length
    return BodyPlan(offset, total)


def parse_listing(html: str, layout: Layout = LAION400M) -> list[int]:
    """Shard numbers named in an autoindex / `python -m http.server` listing of the img_emb directory."""
    return layout.shards_in(_LISTED_NAME.findall(html))


# -- errors at the edge -------------------------------------------------------------------------------------
class _RetryAfter(TransientSourceError):
    """A 429/503 whose server said how long to wait."""

    def __init__(self, message: str, seconds: float | None) -> None:
        super().__init__(message)
        self.retry_after = seconds


def status_error(status: int, name: str, url: str, retry_after: str | None = None) -> SourceError:
    """Our error for a status that carries no file: 404 missing, 5xx/429/408 transient, other 4xx fatal."""
    where = display_url(url)
    if status == 404 or status == 410:
        return MissingSourceFile(f"{name} not found at the source (HTTP {status}: {where})")
    if status >= 500 or status in (408, 429):
        seconds = float(retry_after) if retry_after and retry_after.strip().isdigit() else None
        return _RetryAfter(f"{name}: HTTP {status} from {where}", seconds)
    return SourceError(f"{name}: HTTP {status} from {where}")


def client_error(exc: BaseException, name: str, url: str) -> SourceError:
    """aiohttp / socket exceptions → our tree. Connection trouble and cut bodies may pass; bad URLs will not."""
    where = display_url(url)
    if isinstance(exc, aiohttp.InvalidURL):
        return SourceError(f"{name}: invalid URL {where}")
    if isinstance(exc, aiohttp.TooManyRedirects):
        return SourceError(f"{name}: too many redirects from {where}")
    if isinstance(exc, TimeoutError):
        return TransientSourceError(f"{name}: timed out talking to {where}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TransientSourceError(f"{name}: connection dropped mid-body")
    if isinstance(exc, aiohttp.ClientResponseError):  # its str() carries the full URL: keep status and reason
        return TransientSourceError(f"{name}: bad response from {where} (HTTP {exc.status}: {exc.message})")
    return TransientSourceError(f"{name}: {type(exc).__name__} from {where} ({_first_line(exc)})")


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's text, with any URL in it shown without query or credentials."""
    text = str(exc).strip()
    first = text.splitlines()[0][:300] if text else type(exc).__name__
    return _URL_IN_TEXT.sub(lambda m: display_url(m.group(0)), first)


def _content_length(headers: Mapping[str, str]) -> int | None:
    raw = headers.get("Content-Length")
    return int(raw) if raw is not None and raw.strip().isdigit() else None


# -- the source ----------------------------------------------------------------------------------------------
class HttpSource(CachingSource):
    """Source over an HTTP mirror; downloads land in cfg.cache_dir in the same layout."""

    def __init__(self, cfg: SourceConfig) -> None:
        check_root(cfg.root)
        super().__init__(cfg)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        """One session for the run, made on first use (it must be created inside the running loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=TIMEOUT,
                headers=HEADERS,
                auto_decompress=False,
                connector=aiohttp.TCPConnector(limit=max(8, 3 * self.cfg.download_concurrency)),
            )
        return self._session

    async def available(self, candidates: list[int] | None) -> list[int]:
        """Shards whose three files answer 200 to HEAD now; without candidates, read ROOT/img_emb/'s listing."""
        if candidates is None:
            candidates = await self._listed_shards()
        sem = asyncio.Semaphore(HEAD_CONCURRENCY)
        failures: list[str] = []

        async def present(rel: str) -> bool:
            url = join_url(self.root, rel)
            async with sem:
                try:
                    async with self._http().head(url, allow_redirects=True) as resp:
                        return resp.status == 200
                except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                    failures.append(str(client_error(exc, Path(rel).name, url)))
                    return False

        async def shard_ok(shard: int) -> bool:
            return all(await asyncio.gather(*(present(rel) for rel in self.layout.relpaths(shard))))

        shards = sorted(set(candidates))
        ok = await asyncio.gather(*(shard_ok(s) for s in shards))
        if failures:
            log.warning("%d HEAD request(s) to the source failed, first: %s", len(failures), failures[0])
        return [s for s, good in zip(shards, ok, strict=True) if good]

    async def check_root(self, shard: int | None = None) -> None:
        """A root is mistyped when it, its img_emb directory and `shard`'s img_emb file all answer 404/410.

        Connection trouble decides nothing here (it is retried where files are fetched).
        """
        rels = ["", self.layout.listing_dir + "/" if self.layout.listing_dir else ""]
        if shard is not None:
            rels.append(self.layout.relpaths(shard)[0])
        for rel in dict.fromkeys(rels):
            url = join_url(self.root, rel)
            try:
                async with self._http().get(url, allow_redirects=True) as resp:
                    if resp.status not in (404, 410):
                        return
            except (aiohttp.ClientError, TimeoutError, ConnectionError):
                return
        raise ConfigError(f"source {display_url(self.root)} not found: HTTP 404 for the root and its files")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- one file ----------------------------------------------------------------------------------------------
    async def _attempt(self, rel: str, dest: Path) -> int:
        url = join_url(self.root, rel)
        name = dest.name
        try:
            if dest.exists():
                if await self._cached_ok(url, dest):
                    return 0
                dest.unlink()
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise cache_error(dest, exc) from exc
        for _ in range(2):
            got = await self._get(url, dest)
            if got is not None:
                return got
        raise TransientSourceError(f"{name}: the server answered Range requests inconsistently")

    async def _cached_ok(self, url: str, dest: Path) -> bool:
        """A file already under its final name is complete unless the source now says another size."""
        size = dest.stat().st_size
        try:
            async with self._http().head(url, allow_redirects=True) as resp:
                if resp.status in (404, 410) or resp.status >= 500 or resp.status in (408, 429):
                    raise status_error(resp.status, dest.name, url, resp.headers.get("Retry-After"))
                remote = _content_length(resp.headers) if resp.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise client_error(exc, dest.name, url) from exc
        if remote is None or remote == size:
            log.debug("%s: using the cached copy (%d bytes)", dest.name, size)
            return True
        log.info("%s: cached copy has %d bytes, the source %d: downloading it again", dest.name, size, remote)
        return False

    async def _get(self, url: str, dest: Path) -> int | None:
        """One GET into dest's .part (resumed at its size); renames it into place when complete.

        Returns the bytes received, or None when the .part had to be dropped and the file must start over.
        """
        part = part_path(dest)
        name = dest.name
        offset = file_size(part)
        received = 0
        try:
            async with self._http().get(url, headers=range_header(offset), allow_redirects=True) as resp:
                if resp.status == 416:
                    return await self._unsatisfiable(part, dest, offset, resp.headers.get("Content-Range"))
                if resp.status not in (200, 206):
                    raise status_error(resp.status, name, url, resp.headers.get("Retry-After"))
                encoding = resp.headers.get("Content-Encoding", "identity").lower()
                if encoding not in ("identity", ""):
                    raise SourceError(f"{name}: the server sent it {encoding}-encoded; we store raw bytes only")
                plan = plan_body(resp.status, offset, _content_length(resp.headers), resp.headers.get("Content-Range"))
                if plan is None:
                    log.warning("%s: the server answered another range than asked; starting over from 0", name)
                    drop_file(part)
                    return None
                if offset and plan.start == 0:
                    log.info("%s: the server ignored Range; downloading it again from 0", name)
                f = await _open_part(part, bool(plan.start))
                try:
                    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                        await _write(f, chunk, part)
                        received += len(chunk)
                        metrics.BYTES_DOWNLOADED.inc(len(chunk))
                finally:
                    await f.close()
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise client_error(exc, name, url) from exc
        return finish_part(part, dest, plan.total, received)

    async def _unsatisfiable(self, part: Path, dest: Path, offset: int, content_range: str | None) -> int | None:
        """416 to `bytes=offset-`: the .part is already whole (rename it) or it is bad (drop it, start over)."""
        total = None
        if content_range:
            try:
                total = parse_content_range(content_range).total
            except ValueError:
                total = None
        if offset and total == offset:
            return finish_part(part, dest, total, 0)
        log.warning("%s: cached partial file (%d bytes) does not fit the source; starting over", dest.name, offset)
        drop_file(part)
        return None

    async def _listed_shards(self) -> list[int]:
        """Shard numbers from the HTML listing of ROOT/img_emb/ (autoindex, http.server), or [] if none."""
        url = join_url(self.root, self.layout.listing_dir + "/" if self.layout.listing_dir else "")
        try:
            async with self._http().get(url, allow_redirects=True) as resp:
                if resp.status != 200:
                    log.info("no listing at %s (HTTP %d): pass the shards to look for", display_url(url), resp.status)
                    return []
                html = (await resp.read()).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            log.info("no listing at %s (%s): pass the shards to look for", display_url(url), _first_line(exc))
            return []
        shards = parse_listing(html, self.layout)
        if not shards:
            log.info("the listing at %s names no img_emb file: pass the shards to look for", display_url(url))
        return shards


async def _finished(work: Awaitable[T], undo: Callable[[T], Awaitable[object]] | None = None) -> T:
    """`work` on aiofiles' thread. A thread cannot be interrupted: a download cancelled while its open was on the
    way (its shard refused for another file's 404) still created the .part after the shard's cleanup had looked
    (seen in CI under load), and a write could run under the close that follows. So a cancel waits for the work,
    undoes it (`undo`: close what was opened), then propagates."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(OSError):
            done = await task
            if undo is not None:
                await undo(done)
        raise


async def _open_part(part: Path, append: bool) -> aiofiles.threadpool.binary.AsyncBufferedIOBase:
    try:
        return await _finished(aiofiles.open(part, "ab") if append else aiofiles.open(part, "wb"), lambda f: f.close())
    except OSError as exc:
        raise cache_error(part, exc) from exc


async def _write(f: aiofiles.threadpool.binary.AsyncBufferedIOBase, chunk: bytes, path: Path) -> None:
    try:
        await _finished(f.write(chunk))
    except OSError as exc:
        raise cache_error(path, exc) from exc
