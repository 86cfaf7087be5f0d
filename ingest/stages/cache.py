"""What every remote source shares: a local cache in the source's layout, `.part` files renamed only when
their size is what the source announced, retries with backoff that resume a `.part`, and quarantine of a shard
whose file is missing. HttpSource (download.py) and FsspecSource (objstore.py) differ only in how one
attempt at one file talks to the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from ingest.core import metrics
from ingest.core.config import SourceConfig
from ingest.core.errors import IngestError, MissingSourceFile, TransientSourceError, first_error
from ingest.core.retry import retrying
from ingest.stages.shard import ShardFiles

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def cache_error(path: Path, exc: OSError) -> IngestError:
    return IngestError(f"cache {path}: {exc.strerror or exc}")


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise cache_error(path, exc) from exc


def drop_file(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise cache_error(path, exc) from exc


def finish_part(part: Path, dest: Path, total: int | None, received: int) -> int:
    """Rename a .part whose size is what the source announced; a short one stays to be resumed."""
    size = file_size(part)
    if total is not None and size != total:
        if size > total:
            drop_file(part)
            raise TransientSourceError(f"{dest.name}: {size} bytes on disk but the source has {total}")
        raise TransientSourceError(f"{dest.name}: truncated, got {size} of {total} bytes")
    try:
        part.replace(dest)
    except OSError as exc:
        raise cache_error(dest, exc) from exc
    log.debug("%s: complete, %d bytes", dest.name, size)
    return received


class CachingSource:
    """fetch / release over a local cache; subclasses implement `_attempt` (one try at one file)."""

    def __init__(self, cfg: SourceConfig) -> None:
        self.cfg = cfg
        self.root = cfg.root
        self.cache = cfg.cache_dir
        self.layout = cfg.layout

    async def _attempt(self, rel: str, dest: Path) -> int:
        """Make `dest` complete (bytes received; 0 if the cached copy was good). Raises our errors."""
        raise NotImplementedError

    async def fetch(self, shard: int) -> ShardFiles:
        """Download the shard's three files in parallel (reusing complete cached ones); paths in the cache."""
        t0 = time.monotonic()
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._download(shard, rel)) for rel in self.layout.relpaths(shard)]
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
        return ShardFiles.in_dir(self.cache, shard, self.layout)

    async def release(self, shard: int) -> None:
        """The shard landed (or was refused): delete its cached files like the tutorial's rm, unless kept."""
        if self.cfg.keep_downloads:
            return
        for rel in self.layout.relpaths(shard):
            path = self.cache / rel
            for p in (path, part_path(path)):
                try:
                    p.unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("cannot delete %s: %s", p, exc.strerror)

    async def _download(self, shard: int, rel: str) -> int:
        """Bytes downloaded for one file (0 if the cache already held it), retrying transient failures."""
        dest = self.cache / rel
        name = dest.name

        def resuming(_exc: IngestError, _attempt: int) -> str:
            metrics.RETRIES.inc()
            have = file_size(part_path(dest))
            return f" (resuming at {have} bytes of {name})" if have else ""

        try:
            return await retrying(self.cfg.retry, lambda: self._attempt(rel, dest), f"shard {shard}", log, resuming)
        except TransientSourceError as exc:
            n = self.cfg.retry.max_retries
            gave_up = f"gave up after {n} retr{'y' if n == 1 else 'ies'}"
            raise TransientSourceError(f"shard {shard}: {exc}; {gave_up}") from None
