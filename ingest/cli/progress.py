"""A live display of a load on a terminal: a total bar and one bar per shard in flight."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from ingest.load.progress import LogReporter, Reporter

if TYPE_CHECKING:
    from rich.progress import TaskID


class RichReporter:
    """A total bar plus one bar per shard in flight, with rows and rows/s."""

    def __init__(self, total_shards: int) -> None:
        # imported here: a run without a terminal (every shard worker, every benchmark) spares rich's ~30 ms
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
