"""Where shards come from: a local directory in LAION's layout, or an HTTP mirror downloaded into a cache."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

from ingest.core.config import SourceConfig
from ingest.stages.shard import ShardFiles

_IMG = re.compile(r"^img_emb_(\d+)\.npy$")


class Source(Protocol):
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
    """A directory in LAION's layout; files are used where they are and never deleted."""

    def __init__(self, root: Path) -> None:
        self.root = root

    async def fetch(self, shard: int) -> ShardFiles:
        return ShardFiles.in_dir(self.root, shard)

    async def release(self, shard: int) -> None:
        return None

    async def available(self, candidates: list[int] | None) -> list[int]:
        """Shards with all three files present (writers should rename complete files into place)."""
        found = []
        img_dir = self.root / "img_emb"
        names = sorted(p.name for p in img_dir.iterdir()) if img_dir.is_dir() else []
        for name in names:
            m = _IMG.match(name)
            if not m:
                continue
            shard = int(m.group(1))
            if candidates is not None and shard not in candidates:
                continue
            files = ShardFiles.in_dir(self.root, shard)
            if files.text.is_file() and files.meta.is_file():
                found.append(shard)
        return sorted(found)

    async def close(self) -> None:
        return None


def open_source(cfg: SourceConfig) -> Source:
    if cfg.is_http:
        from ingest.stages.download import HttpSource

        source: Source = HttpSource(cfg)
        return source
    return LocalSource(Path(cfg.root))
