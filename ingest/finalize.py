"""Vector index finalizer (issue: vector search). Placeholder until that issue lands."""

from __future__ import annotations

from ingest.errors import NotImplementedYet
from ingest.settings import Settings


def index_command() -> None:
    """Add and materialize vector_similarity indexes (not implemented yet)."""
    raise NotImplementedYet("index: not implemented yet")


async def finalize_after_load(settings: Settings) -> None:
    raise NotImplementedYet("--index: not implemented yet")
