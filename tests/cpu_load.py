"""A bounded CPU burner for fault tests: busy loops in child processes, as a shared worker node has.

Bugs hide in the timing a quiet machine never has (issue #19): fault tests run their fault with the cores busy.
Each burner is its own process that exits by itself after `seconds`; `busy_cores()` also kills them by pid on exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

BURN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def busy_cores(cores: int | None = None, seconds: float = 120.0) -> Iterator[list[int]]:
    """Keep `cores` (default: all) busy for at most `seconds`; yields the burners' pids."""
    n = cores if cores is not None else (os.cpu_count() or 2)
    procs = [
        subprocess.Popen([sys.executable, "-c", BURN.format(seconds=seconds)], stdin=subprocess.DEVNULL)
        for _ in range(n)
    ]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
