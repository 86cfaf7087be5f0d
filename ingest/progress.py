"""Progress for people: a rich live display on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

log = logging.getLogger("ingest")


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


class RichReporter:
    """A total bar plus one bar per shard in flight, with rows and rows/s."""

    def __init__(self, total_shards: int) -> None:
        self._console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rows/s"),
            TimeElapsedColumn(),
            console=self._console,
            transient=False,
        )
        self._total = self._progress.add_task("shards", total=total_shards, rate="")
        self._tasks: dict[int, TaskID] = {}
        self._start = time.monotonic()
        self._rows = 0
        self._progress.start()

    def shard_started(self, shard: int, rows: int, already: int) -> None:
        self._tasks[shard] = self._progress.add_task(f"shard {shard}", total=rows, completed=already, rate="")

    def rows_landed(self, shard: int, rows: int) -> None:
        self._rows += rows
        rate = f"{self._rows / max(time.monotonic() - self._start, 1e-9):,.0f}"
        task = self._tasks.get(shard)
        if task is not None:
            self._progress.update(task, advance=rows, rate="")
        self._progress.update(self._total, rate=rate)

    def shard_done(self, shard: int) -> None:
        task = self._tasks.pop(shard, None)
        if task is not None:
            self._progress.remove_task(task)
        self._progress.advance(self._total)

    def shard_bad(self, shard: int, reason: str) -> None:
        task = self._tasks.pop(shard, None)
        if task is not None:
            self._progress.remove_task(task)
        self._progress.advance(self._total)
        self._console.print(f"[red]{reason}[/red]")

    def close(self) -> None:
        self._progress.stop()


def make_reporter(enabled: bool, total_shards: int) -> Reporter:
    if enabled and sys.stderr.isatty():
        return RichReporter(total_shards)
    return LogReporter()
