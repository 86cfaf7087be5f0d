"""Object-store sources through fsspec: `s3://` (and S3-compatible stores), `gs://`, `hf://` (Hugging Face hub).

The cache, `.part` files, size checks, retries and quarantine are CachingSource's (stages/cache.py), exactly as
for the HTTP mirror; here is only how one attempt at one file talks to the store. A `.part` is resumed with a
ranged read from its size (every fsspec store here reads by byte range). Credentials come from each store's own
environment and configuration (AWS_* / ~/.aws, GOOGLE_APPLICATION_CREDENTIALS / gcloud, HF_TOKEN / the hub's
login): never from argv, and never logged. fsspec and store exceptions are mapped into our tree here.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.core import metrics
from ingest.core.config import SourceConfig
from ingest.core.errors import ConfigError, MissingSourceFile, SourceError, TransientSourceError
from ingest.stages.cache import CHUNK_BYTES, CachingSource, cache_error, drop_file, file_size, finish_part, part_path

log = logging.getLogger(__name__)

PROTOCOLS = {"s3": "s3", "gs": "gcs", "gcs": "gcs", "hf": "hf"}
EXTRAS = {"s3": "s3fs", "gcs": "gcsfs", "hf": "huggingface_hub"}


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """A parsed object-store root: fsspec protocol, the path under it, and the filesystem's options."""

    protocol: str
    path: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def url(self, rel: str = "") -> str:
        scheme = "gs" if self.protocol == "gcs" else self.protocol
        return f"{scheme}://{self.join(rel)}"

    def join(self, rel: str) -> str:
        return f"{self.path}/{rel}".rstrip("/") if rel else self.path


def parse_store(root: str, endpoint_url: str | None = None, env: Mapping[str, str] | None = None) -> StoreSpec:
    """`s3://bucket/prefix` → StoreSpec. Pure: the endpoint (flag, else AWS_ENDPOINT_URL) is the only option;
    credentials are left to each store's standard chain and are refused when written into the URL."""
    env = os.environ if env is None else env
    scheme, sep, rest = root.partition("://")
    if not sep or scheme not in PROTOCOLS:
        raise ConfigError(f"source {root.split('?')[0]!r}: not an s3://, gs:// or hf:// URL")
    if "?" in rest or "@" in rest.split("/", 1)[0]:
        raise ConfigError(
            f"source {scheme}://…: put no credentials or query in the URL; use the store's environment or config"
        )
    path = rest.strip("/")
    if not path:
        raise ConfigError(f"source {scheme}:// names no bucket or repository")
    protocol = PROTOCOLS[scheme]
    options: dict[str, Any] = {}
    if protocol == "s3":
        endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
    elif endpoint_url:
        raise ConfigError(f"--endpoint-url is for S3-compatible stores, not {scheme}://")
    return StoreSpec(protocol, path, options)


def store_error(exc: BaseException, name: str, url: str) -> SourceError:
    """A store exception → our tree: missing → quarantine, denied → fatal, the rest may pass."""
    if isinstance(exc, FileNotFoundError):
        return MissingSourceFile(f"{name} not found at the source ({url})")
    if isinstance(exc, PermissionError):
        return SourceError(f"{name}: access denied at {url} (check the store's credentials)")
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return TransientSourceError(f"{name}: {type(exc).__name__} from {url}{f' ({text})' if text else ''}")


def open_filesystem(spec: StoreSpec) -> Any:
    import fsspec

    try:
        return fsspec.filesystem(spec.protocol, **spec.options)
    except ImportError:
        raise ConfigError(
            f"{spec.url()}: install {EXTRAS[spec.protocol]} (pip install 'laion-ingest[{spec.protocol}]')"
        ) from None


class FsspecSource(CachingSource):
    """Source over an object store; downloads land in cfg.cache_dir in the source's layout."""

    def __init__(self, cfg: SourceConfig) -> None:
        super().__init__(cfg)
        self.spec = parse_store(cfg.root, cfg.endpoint_url)
        self.fs = open_filesystem(self.spec)

    async def check_root(self, shard: int | None = None) -> None:
        url = self.spec.url()
        try:
            await asyncio.to_thread(self.fs.ls, self.spec.path, detail=False)
        except FileNotFoundError:
            raise ConfigError(f"source {url} not found (no such bucket, repository or prefix)") from None
        except PermissionError:
            raise ConfigError(f"source {url} cannot be listed: access denied") from None
        except Exception as exc:  # connection trouble decides nothing: fetches retry it
            log.debug("listing %s failed: %s", url, type(exc).__name__)

    async def available(self, candidates: list[int] | None) -> list[int]:
        """Shards whose three objects exist now (one listing per directory of the layout)."""
        dirs: dict[str, set[str]] = {}
        for template in (self.layout.img, self.layout.text, self.layout.meta):
            d = template.rsplit("/", 1)[0] if "/" in template else ""
            if d not in dirs:
                dirs[d] = await self._names(d)
        shards = self.layout.shards_in(sorted(dirs.get(self.layout.listing_dir, set())))
        if candidates is not None:
            shards = [s for s in shards if s in set(candidates)]
        return [s for s in shards if all(self._listed(dirs, rel) for rel in self.layout.relpaths(s))]

    async def close(self) -> None:
        return None

    async def _names(self, rel_dir: str) -> set[str]:
        path = self.spec.join(rel_dir)
        try:
            self.fs.invalidate_cache(path)
            names = await asyncio.to_thread(self.fs.ls, path, detail=False)
        except Exception as exc:
            log.warning("cannot list %s: %s", self.spec.url(rel_dir), store_error(exc, rel_dir or "root", path))
            return set()
        return {str(n).rstrip("/").rsplit("/", 1)[-1] for n in names}

    @staticmethod
    def _listed(dirs: dict[str, set[str]], rel: str) -> bool:
        d, _, name = rel.rpartition("/")
        return name in dirs.get(d, set())

    async def _attempt(self, rel: str, dest: Path) -> int:
        path, url, name = self.spec.join(rel), self.spec.url(rel), dest.name
        try:
            info = await asyncio.to_thread(self.fs.info, path)
        except Exception as exc:
            raise store_error(exc, name, url) from None
        total = int(info.get("size") or 0)
        try:
            if dest.exists():
                if dest.stat().st_size == total:
                    log.debug("%s: using the cached copy (%d bytes)", name, total)
                    return 0
                log.info(
                    "%s: cached copy has %d bytes, the source %d: downloading it again",
                    name,
                    dest.stat().st_size,
                    total,
                )
                dest.unlink()
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise cache_error(dest, exc) from exc
        part = part_path(dest)
        offset = file_size(part)
        if offset > total:
            log.warning("%s: cached partial file (%d bytes) does not fit the source; starting over", name, offset)
            drop_file(part)
            offset = 0
        received = await self._copy(path, url, part, offset, total) if offset < total else 0
        return finish_part(part, dest, total, received)

    async def _copy(self, path: str, url: str, part: Path, offset: int, total: int) -> int:
        """Append bytes offset..total of the object to `part`; returns the bytes received (a cut leaves a .part)."""
        received = 0
        try:
            src = await asyncio.to_thread(self.fs.open, path, "rb", block_size=CHUNK_BYTES)
        except Exception as exc:
            raise store_error(exc, part.name[: -len(".part")], url) from None
        try:
            out = part.open("ab" if offset else "wb")
        except OSError as exc:
            src.close()
            raise cache_error(part, exc) from exc
        try:
            if offset:
                src.seek(offset)
            while offset + received < total:
                try:
                    chunk = await asyncio.to_thread(src.read, min(CHUNK_BYTES, total - offset - received))
                except Exception as exc:
                    raise store_error(exc, part.name[: -len(".part")], url) from None
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise cache_error(part, exc) from exc
                received += len(chunk)
                metrics.BYTES_DOWNLOADED.inc(len(chunk))
        finally:
            out.close()
            await asyncio.to_thread(src.close)
        return received
