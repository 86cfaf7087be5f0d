"""Where shards come from: a local directory, an HTTP mirror or an object store, in a layout (core/layout.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ingest.core.config import SourceConfig
from ingest.core.errors import ConfigError
from ingest.core.layout import LAION400M, Layout
from ingest.stages.shard import ShardFiles


class Source(Protocol):
    async def check_root(self, shard: int | None = None) -> None:
        """Raise ConfigError when the root does not exist or cannot be listed (before any shard is tried);
        `shard` is one the run wants, whose img_emb file may vouch for a root that refuses listings."""
        ...

    async def fetch(self, shard: int) -> ShardFiles:
        """Make the shard's three files available locally (download if needed) and return their paths."""
        ...

    async def release(self, shard: int) -> None:
        """The shard landed: drop local copies we made (unless asked to keep them)."""
        ...

    async def available(self, candidates: list[int] | None) -> list[int]:
        """Shards whose three files are complete at the source now (for the daemon)."""
        ...

    async def close(self) -> None: ...


class LocalSource:
    """A directory in a layout; files are used where they are and never deleted."""

    def __init__(self, root: Path, layout: Layout = LAION400M) -> None:
        self.root = root
        self.layout = layout

    async def check_root(self, shard: int | None = None) -> None:
        if not self.root.is_dir():
            what = "is not a directory" if self.root.exists() else "does not exist"
            raise ConfigError(f"source {self.root} {what}")
        try:
            next(self.root.iterdir(), None)
        except OSError as exc:
            raise ConfigError(f"source {self.root} cannot be listed: {exc.strerror}") from None

    async def fetch(self, shard: int) -> ShardFiles:
        return ShardFiles.in_dir(self.root, shard, self.layout)

    async def release(self, shard: int) -> None:
        return None

    async def available(self, candidates: list[int] | None) -> list[int]:
        """Shards with all three files present (writers should rename complete files into place)."""
        img_dir = self.root / self.layout.listing_dir
        names = sorted(p.name for p in img_dir.iterdir()) if img_dir.is_dir() else []
        found = []
        for shard in self.layout.shards_in(names):
            if candidates is not None and shard not in candidates:
                continue
            files = ShardFiles.in_dir(self.root, shard, self.layout)
            if files.img.is_file() and files.text.is_file() and files.meta.is_file():
                found.append(shard)
        return found

    async def close(self) -> None:
        return None


def open_source(cfg: SourceConfig) -> Source:
    if cfg.is_http:
        from ingest.stages.download import HttpSource

        source: Source = HttpSource(cfg)
        return source
    if cfg.is_object_store:
        from ingest.stages.objstore import FsspecSource

        store: Source = FsspecSource(cfg)
        return store
    return LocalSource(Path(cfg.root), cfg.layout)
