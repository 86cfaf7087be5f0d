"""What every bench section shares: run a whole process and measure it (wall, peak RSS, CPU), interleave paths,
synthesize a shard, the command lines of our program, a loopback 18.16 server and its table. Imported by
bench/run.py and by the section modules (big.py, ...), which bench/run.py imports back lazily: keeping these here
means no section imports run.py (no import circle).
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

PY = sys.executable
PROCESS_TIMEOUT = 300.0
ROOT = HERE.parent


def _sources(package: Path) -> dict[str, bytes]:
    return {str(f.relative_to(package)): f.read_bytes() for f in sorted(package.rglob("*.py"))}


def _command_of_ours() -> tuple[list[str], str]:
    """The command a user runs: the installed `laion-ingest`, when what is installed is this checkout's sources
    (pip compiled them); else `python -m ingest` from the checkout, its bytecode written once outside it.

    Timing the checkout through `python -m ingest` in an environment with PYTHONDONTWRITEBYTECODE=1 (this
    machine's) compiled every module in every timed run, ~35 ms of each start; timing an installed copy older
    than the checkout would time other code.
    """
    script = Path(PY).parent / "laion-ingest"
    elsewhere = [p for p in sys.path if Path(p or ".").resolve() != ROOT]  # the checkout itself is no install
    spec = importlib.machinery.PathFinder.find_spec("ingest", elsewhere)
    installed = Path(spec.origin).parent if spec is not None and spec.origin else None
    if script.exists() and installed is not None and _sources(installed) == _sources(ROOT / "ingest"):
        return [str(script)], f"ours: {script} (installed; its sources are this checkout's)"
    why = "no copy installed apart from it" if installed is None else "the installed copy differs from it"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.setdefault("PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "laion-ingest-bench-pycache"))
    said = f"ours: python -m ingest from {ROOT} ({why}; its bytecode written by the first run, then reused)"
    return [PY, "-m", "ingest"], said


LAION_INGEST, OURS_IS = _command_of_ours()
"""How every timed run of ours starts, and a line saying which copy that is (each bench prints it)."""


@dataclass
class Measure:
    label: str
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float = 0.0
    """User + system CPU of the process and its waited-for children."""
    out: str = ""
    """What the process printed on stdout."""


def _drained(stream: IO[bytes] | None, into: list[bytes]) -> threading.Thread:
    """A thread reading `stream` to its end: a child that prints more than a pipe holds never blocks on us."""
    reader = threading.Thread(target=lambda: into.append(stream.read() if stream else b""), daemon=True)
    reader.start()
    return reader


def measure(
    label: str,
    cmd: list[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = PROCESS_TIMEOUT,
    stderr_log: Path | None = None,
) -> Measure:
    """Wall time, peak RSS (ru_maxrss of the child and its waited-for children), CPU and stdout of one whole
    process; a failure ends the bench with the process's last words. Its stderr is appended to `stderr_log` when
    given (a long bench keeps it), else kept for that message.

    ru_maxrss also keeps the high-water mark of the forking process's memory at exec, so this process must never
    hold large data itself (it only starts processes and reads files' sizes).
    """
    t0 = time.monotonic()
    with contextlib.ExitStack() as files:
        err_to = files.enter_context(stderr_log.open("ab")) if stderr_log else subprocess.PIPE
        proc = subprocess.Popen(
            cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=err_to,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [_drained(proc.stdout, out), _drained(proc.stderr, err)]
    timer = threading.Timer(timeout, proc.kill)  # a hung process fails the bench instead of stalling it
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    seconds = time.monotonic() - t0
    for reader in readers:
        reader.join()
    text = b"".join(out).decode(errors="replace")
    if (code := os.waitstatus_to_exitcode(status)) != 0:
        said = stderr_log.read_bytes()[-2000:] if stderr_log else b"".join(err)[-2000:]
        raise SystemExit(f"{label} failed ({code}):\n{text[-2000:]}\n{said.decode(errors='replace')}")
    return Measure(label, seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, text)


def best_of(n: int, label: str, make_cmd, setup=None) -> Measure:  # type: ignore[no-untyped-def]
    """Minimum time over n runs (setup() before each, e.g. a fresh database dir); peak RSS of that run."""
    runs = []
    for _ in range(n):
        if setup is not None:
            setup()
        runs.append(measure(label, make_cmd()))
    return min(runs, key=lambda m: m.seconds)


def compare(rounds: int, entries: list[tuple[str, object, object]]) -> list[Measure]:  # type: ignore[type-arg]
    """Interleaved rounds (A, B, C, A, B, C, ...) after one untimed warm-up round; the minimum per path.

    Interleaving spreads the machine's drift over every path alike, and the warm-up takes first-run costs (a cold
    server, cold page cache) out of whichever path happens to come first.
    """
    best: dict[str, Measure] = {}
    for r in range(rounds + 1):
        for label, make_cmd, setup in entries:
            if setup is not None:
                setup()  # type: ignore[operator]
            m = measure(label, make_cmd())  # type: ignore[operator]
            if r > 0 and (label not in best or m.seconds < best[label].seconds):
                best[label] = m
    return [best[label] for label, _, _ in entries]


def synth(root: Path, shard: int, rows: int) -> None:
    subprocess.run(
        [*LAION_INGEST, "synth", "--out", str(root), "--shards", str(shard), "--rows", str(rows)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def fresh(path: Path):  # type: ignore[no-untyped-def]
    def reset() -> None:
        shutil.rmtree(path, ignore_errors=True)

    return reset


def ours(src: Path, shards: str, state: Path, *args: str) -> list[str]:
    """Our whole program, as a user runs it."""
    run = ["run", "--source", str(src), "--shards", shards, "--no-progress", "--state", str(state)]
    return [*LAION_INGEST, *run, *args]


def ours_chdb(src: Path, db: Path, shard: int, *extra: str) -> list[str]:
    return ours(src, str(shard), Path(str(db) + ".ledger.json"), "--target", f"chdb:{db}", *extra)


def print_table(title: str, rows: list[Measure], base: Measure) -> None:
    print(f"\n## {title}")
    print(f"{'path':58s} {'seconds':>8s} {'peak RSS MB':>12s} {'÷ ' + base.label[:20]:>24s}")
    for m in rows:
        print(f"{m.label:58s} {m.seconds:8.2f} {m.peak_rss_mb:12.0f} {m.seconds / base.seconds:24.2f}")


def start_server(work: Path):  # type: ignore[no-untyped-def]
    from server_fixtures import server_available, start_clickhouse

    reason = server_available()
    if reason is not None:
        print(f"\n(server sections skipped: {reason})")
        return None
    return start_clickhouse(work / "clickhouse")


def ours_http(src: Path, handle, db: str, shards: str, state: Path, *extra: str) -> list[str]:  # type: ignore[no-untyped-def]
    return ours(src, shards, state, "--target", handle.http_url, "--database", db, *extra)


def reset_server_table(handle, db: str, state: Path):  # type: ignore[no-untyped-def]
    def reset() -> None:
        handle.query(f"DROP TABLE IF EXISTS {db}.laion")
        handle.query(f"CREATE TABLE {db}.laion ({COLUMNS_DDL}) ENGINE = MergeTree ORDER BY id")
        state.unlink(missing_ok=True)

    return reset


COLUMNS_DDL = (
    "id Int64, url String, caption String, NSFW String, similarity Float32, "
    "image_embedding Array(Float32), text_embedding Array(Float32)"
)
