"""The HTTP source: a mirror in LAION's layout, downloaded shard by shard into a local cache.

Each file is streamed into `NAME.part` and renamed to `NAME` only once its size matches what the server
announced, so a file under its final name is always complete. A `.part` left by a dropped connection (or by an
earlier run) is resumed with `Range: bytes=N-`; a server that ignores Range restarts the file from byte 0.
aiohttp and OS exceptions are mapped into ingest.core.errors here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import aiofiles
import aiohttp

from ingest.core import metrics
from ingest.core.config import SourceConfig
from ingest.core.errors import (
    ConfigError,
    IngestError,
    MissingSourceFile,
    SourceError,
    TransientSourceError,
    first_error,
)
from ingest.core.retry import retrying
from ingest.stages.shard import ShardFiles

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
HEAD_CONCURRENCY = 16
TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
HEADERS = {"Accept-Encoding": "identity", "User-Agent": "laion-ingest"}
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)\s*/\s*(\d+|\*)\s*$", re.IGNORECASE)
_LISTED_IMG = re.compile(r"img_emb_(\d+)\.npy")
_URL_IN_TEXT = re.compile(r"https?://[^\s'\"<>()]+")


# -- pure helpers: URLs, headers, response planning ---------------------------------------------------------
def shard_relpaths(shard: int) -> tuple[str, str, str]:
    """The three files of a shard, relative to the root (the same layout in the mirror and in the cache)."""
    return (
        f"img_emb/img_emb_{shard}.npy",
        f"text_emb/text_emb_{shard}.npy",
        f"metadata/metadata_{shard}.parquet",
    )


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


def parse_listing(html: str) -> list[int]:
    """Shard numbers named in an autoindex / `python -m http.server` listing of ROOT/img_emb/."""
    return sorted({int(m.group(1)) for m in _LISTED_IMG.finditer(html)})


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


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


def _cache_error(path: Path, exc: OSError) -> IngestError:
    return IngestError(f"cache {path}: {exc.strerror or exc}")


def _content_length(headers: Mapping[str, str]) -> int | None:
    raw = headers.get("Content-Length")
    return int(raw) if raw is not None and raw.strip().isdigit() else None


# -- the source ----------------------------------------------------------------------------------------------
class HttpSource:
    """Source over an HTTP mirror; downloads land in cfg.cache_dir in the same layout."""

    def __init__(self, cfg: SourceConfig) -> None:
        check_root(cfg.root)
        self.cfg = cfg
        self.root = cfg.root
        self.cache = cfg.cache_dir
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

    async def fetch(self, shard: int) -> ShardFiles:
        """Download the shard's three files in parallel (reusing complete cached ones); paths in the cache."""
        t0 = time.monotonic()
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._download(shard, rel)) for rel in shard_relpaths(shard)]
        except BaseExceptionGroup as group:
            error = first_error(group, MissingSourceFile, IngestError) or group
            if isinstance(error, IngestError) and not error.retriable:
                await self.release(shard)  # the shard is refused: its other files are of no use in the cache
            raise error from None
        fetched = sum(t.result() for t in tasks)
        if fetched:
            secs = time.monotonic() - t0
            log.info(
                "shard %d: downloaded %s in %.1f s (%s/s)",
                shard,
                human_bytes(fetched),
                secs,
                human_bytes(fetched / max(secs, 1e-9)),
            )
        return ShardFiles.in_dir(self.cache, shard)

    async def release(self, shard: int) -> None:
        """The shard landed (or was refused): delete its cached files like the tutorial's rm, unless kept."""
        if self.cfg.keep_downloads:
            return
        for rel in shard_relpaths(shard):
            path = self.cache / rel
            for p in (path, _part(path)):
                try:
                    p.unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("cannot delete %s: %s", p, exc.strerror)

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
            return all(await asyncio.gather(*(present(rel) for rel in shard_relpaths(shard))))

        shards = sorted(set(candidates))
        ok = await asyncio.gather(*(shard_ok(s) for s in shards))
        if failures:
            log.warning("%d HEAD request(s) to the source failed, first: %s", len(failures), failures[0])
        return [s for s, good in zip(shards, ok, strict=True) if good]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- one file ----------------------------------------------------------------------------------------------
    async def _download(self, shard: int, rel: str) -> int:
        """Bytes downloaded for one file (0 if the cache already held it), retrying transient failures."""
        url = join_url(self.root, rel)
        dest = self.cache / rel
        name = dest.name

        def resuming(_exc: IngestError, _attempt: int) -> str:
            metrics.RETRIES.inc()
            have = _size(_part(dest))
            return f" (resuming at {have} bytes of {name})" if have else ""

        try:
            return await retrying(self.cfg.retry, lambda: self._attempt(url, dest), f"shard {shard}", log, resuming)
        except TransientSourceError as exc:
            n = self.cfg.retry.max_retries
            gave_up = f"gave up after {n} retr{'y' if n == 1 else 'ies'}"
            raise TransientSourceError(f"shard {shard}: {exc}; {gave_up}") from None

    async def _attempt(self, url: str, dest: Path) -> int:
        name = dest.name
        try:
            if dest.exists():
                if await self._cached_ok(url, dest):
                    return 0
                dest.unlink()
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _cache_error(dest, exc) from exc
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
        part = _part(dest)
        name = dest.name
        offset = _size(part)
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
                    _drop(part)
                    return None
                if offset and plan.start == 0:
                    log.info("%s: the server ignored Range; downloading it again from 0", name)
                try:
                    f = await aiofiles.open(part, "ab" if plan.start else "wb")
                except OSError as exc:
                    raise _cache_error(part, exc) from exc
                try:
                    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                        await _write(f, chunk, part)
                        received += len(chunk)
                        metrics.BYTES_DOWNLOADED.inc(len(chunk))
                finally:
                    await f.close()
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise client_error(exc, name, url) from exc
        return self._finish(part, dest, plan.total, received)

    async def _unsatisfiable(self, part: Path, dest: Path, offset: int, content_range: str | None) -> int | None:
        """416 to `bytes=offset-`: the .part is already whole (rename it) or it is bad (drop it, start over)."""
        total = None
        if content_range:
            try:
                total = parse_content_range(content_range).total
            except ValueError:
                total = None
        if offset and total == offset:
            return self._finish(part, dest, total, 0)
        log.warning("%s: cached partial file (%d bytes) does not fit the source; starting over", dest.name, offset)
        _drop(part)
        return None

    def _finish(self, part: Path, dest: Path, total: int | None, received: int) -> int:
        """Rename a .part whose size is what the server announced; a short one stays to be resumed."""
        size = _size(part)
        if total is not None and size != total:
            if size > total:
                _drop(part)
                raise TransientSourceError(f"{dest.name}: {size} bytes on disk but the source has {total}")
            raise TransientSourceError(f"{dest.name}: truncated, got {size} of {total} bytes")
        try:
            part.replace(dest)
        except OSError as exc:
            raise _cache_error(dest, exc) from exc
        log.debug("%s: complete, %d bytes", dest.name, size)
        return received

    async def _listed_shards(self) -> list[int]:
        """Shard numbers from the HTML listing of ROOT/img_emb/ (autoindex, http.server), or [] if none."""
        url = join_url(self.root, "img_emb/")
        try:
            async with self._http().get(url, allow_redirects=True) as resp:
                if resp.status != 200:
                    log.info("no listing at %s (HTTP %d): pass the shards to look for", display_url(url), resp.status)
                    return []
                html = (await resp.read()).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            log.info("no listing at %s (%s): pass the shards to look for", display_url(url), _first_line(exc))
            return []
        shards = parse_listing(html)
        if not shards:
            log.info("the listing at %s names no img_emb_N.npy: pass the shards to look for", display_url(url))
        return shards


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise _cache_error(path, exc) from exc


def _drop(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise _cache_error(path, exc) from exc


async def _write(f: aiofiles.threadpool.binary.AsyncBufferedIOBase, chunk: bytes, path: Path) -> None:
    try:
        await f.write(chunk)
    except OSError as exc:
        raise _cache_error(path, exc) from exc
