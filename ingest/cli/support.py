"""What every command shares: option types, settings building, the error edge, running a coroutine on uvloop."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

import orjson
import typer
import uvloop

from ingest.core.errors import EXIT_FATAL, IngestError, exception_leaves, first_error
from ingest.core.target import DEFAULT_TARGET

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger(__name__)

TargetOpt = Annotated[
    str, typer.Option("--target", "-t", help="chdb:PATH (embedded) or http(s)://HOST:PORT[/DATABASE]")
]
TableOpt = Annotated[str, typer.Option("--table", help="Table name")]
DatabaseOpt = Annotated[
    str | None, typer.Option("--database", help="Database (default: from the target URL, else 'default')")
]
UserOpt = Annotated[str | None, typer.Option("--user", help="ClickHouse user (env CLICKHOUSE_USER; default 'default')")]
PasswordFileOpt = Annotated[
    Path | None,
    typer.Option("--password-file", help="File holding the password (else env CLICKHOUSE_PASSWORD); never a flag"),
]
CaFileOpt = Annotated[Path | None, typer.Option("--ca-file", help="PEM bundle of a private CA for https targets")]
InsecureOpt = Annotated[bool, typer.Option("--insecure", help="Skip TLS certificate checks (only when asked)")]
ClusterOpt = Annotated[str | None, typer.Option("--cluster", help="ClickHouse cluster name (Distributed table)")]
NodeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--node",
        help="HOST:TCP_PORT=URL: the HTTP URL of the cluster member system.clusters lists as HOST:TCP_PORT "
        "(repeatable; default: the target's port on the member's host)",
    ),
]

_debug = False


def set_debug(value: bool) -> None:
    global _debug
    _debug = value


def setup_logging(fmt: Literal["text", "json"] = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("ingest")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if _debug else level)
    root.propagate = False


class JsonFormatter(logging.Formatter):
    """One JSON object per line (orjson): for log pipelines watching the daemon."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            "logger": record.name,
        }
        if record.exc_info and _debug:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def cli_errors(fn: Callable[P, T]) -> Callable[P, T]:
    """The one edge where errors become a line on stderr and an exit code (traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except IngestError as exc:
            if _debug:
                raise
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort):
            raise
        except ExceptionGroup as group:  # a TaskGroup's failure: report the error that caused it
            leaves = exception_leaves(group)
            cause = first_error(group, IngestError)
            if _debug:
                raise
            if cause is not None:
                raise fail(str(cause), cause.exit_code) from None
            first = leaves[0] if leaves else group
            raise fail(
                f"internal error: {type(first).__name__}: {first} (rerun with --debug for details)", EXIT_FATAL
            ) from None
        except Exception as exc:
            if _debug:
                raise
            raise fail(
                f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for details)", EXIT_FATAL
            ) from None

    return wrapper


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop (the event loop stays free while executors run chdb and decoding)."""
    return uvloop.run(coro)


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGINT/SIGTERM ask for an ordered stop; a second signal is the user insisting: stop now."""
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now (the next run reconciles in-flight batches)", sig.name)
            os._exit(130)
        log.warning("%s: finishing in-flight batches, taking no new shards", sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)


__all__ = ["DEFAULT_TARGET"]
