"""Long-running daemon with /metrics and /healthz (issue: operations). Placeholder until that issue lands."""

from __future__ import annotations

from ingest.errors import NotImplementedYet


def daemon_command() -> None:
    """Watch a source and ingest new shards as they appear (not implemented yet)."""
    raise NotImplementedYet("daemon: not implemented yet")
