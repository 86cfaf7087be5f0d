"""Shared fixtures: synthetic shards from our own synth, a fresh chdb directory per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ingest.stages.synth import SynthSpec, write_shard

pytest_plugins = ["server_fixtures", "daemon_proc"]

SOAK_FAULTS = 30
"""Faults of the short soak CI runs (tests/test_soak.py); --soak-faults N or env SOAK_FAULTS runs more."""
SOAK_SECONDS_PER_FAULT = 10


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak-faults",
        type=int,
        default=None,
        help=f"faults each soak injects (default: env SOAK_FAULTS, else {SOAK_FAULTS}); env SOAK_SEED sets the seed",
    )


def soak_faults(config: pytest.Config) -> int:
    value = config.getoption("--soak-faults")
    return int(value) if value is not None else int(os.environ.get("SOAK_FAULTS", SOAK_FAULTS))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A long soak may run past the suite's per-test timeout: give soak tests time in proportion to their faults."""
    budget = max(600, soak_faults(config) * SOAK_SECONDS_PER_FAULT)
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(pytest.mark.timeout(budget))


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
