"""How a load reports progress: the Reporter protocol, and plain log lines (the CLI brings a live display)."""

from __future__ import annotations

import logging
import time
from typing import Protocol

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def shard_started(self, shard: int, rows: int, already: int) -> None: ...
    def rows_landed(self, shard: int, rows: int) -> None: ...
    def shard_done(self, shard: int) -> None: ...
    def shard_bad(self, shard: int, reason: str) -> None: ...
    def close(self) -> None: ...


class LogReporter:
    """One line per shard event and a rate line every few seconds."""

    def __init__(self, every: float = 5.0) -> None:
        self._every = every
        self._start = time.monotonic()
        self._last = self._start
        self._rows = 0

    def shard_started(self, shard: int, rows: int, already: int) -> None:
        log.info("shard %d: %d rows%s", shard, rows, f" ({already} already landed)" if already else "")

    def rows_landed(self, shard: int, rows: int) -> None:
        self._rows += rows
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            log.info("%d rows, %.0f rows/s", self._rows, self._rows / max(now - self._start, 1e-9))

    def shard_done(self, shard: int) -> None:
        log.info("shard %d: done", shard)

    def shard_bad(self, shard: int, reason: str) -> None:
        log.error("%s", reason)

    def close(self) -> None:
        return None
