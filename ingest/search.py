"""Similarity search and recall evaluation (issue: vector search). Placeholder until that issue lands."""

from __future__ import annotations

from ingest.errors import NotImplementedYet


def search_command() -> None:
    """Nearest rows to a text, image, row or vector (not implemented yet)."""
    raise NotImplementedYet("search: not implemented yet")


def eval_command() -> None:
    """Recall of the vector index against brute force (not implemented yet)."""
    raise NotImplementedYet("eval: not implemented yet")
