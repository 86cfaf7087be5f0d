"""Shared fixtures: synthetic shards from our own synth, a fresh chdb directory per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.stages.synth import SynthSpec, write_shard

pytest_plugins = ["server_fixtures"]


@pytest.fixture
def make_shards(tmp_path: Path):  # type: ignore[no-untyped-def]
    """make_shards(shards=[0,1,2], rows=5000, **spec) → source dir with LAION-layout shards."""

    def make(shards: list[int] | range = (0, 1, 2), rows: int = 5000, root: Path | None = None, **kw: object) -> Path:
        out = root or tmp_path / "src"
        for s in shards:
            write_shard(out, s, SynthSpec(rows=rows, **kw))  # type: ignore[arg-type]
        return out

    return make


@pytest.fixture
def chdb_target(tmp_path: Path) -> str:
    return f"chdb:{tmp_path / 'db'}"
