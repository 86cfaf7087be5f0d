"""Option types for the loading knobs that `run` and `daemon` share, so both spell and check them alike.

Flag names, bounds and help match `laion-ingest run` exactly (tests/test_daemon.py compares the two commands).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

SourceOpt = Annotated[str, typer.Option("--source", "-s", help="Local dir or http(s) mirror root in LAION's layout")]
BatchRowsOpt = Annotated[int, typer.Option("--batch-rows", min=1, help="Rows per batch (fixes batch id ranges)")]
QueueDepthOpt = Annotated[int, typer.Option("--queue-depth", min=1, help="Batches buffered between stages")]
DownloadConcurrencyOpt = Annotated[int, typer.Option("--download-concurrency", min=1)]
InsertConcurrencyOpt = Annotated[int, typer.Option("--insert-concurrency", min=1)]
DimOpt = Annotated[int, typer.Option("--dim", min=1, help="Embedding dimension")]
CacheDirOpt = Annotated[Path, typer.Option("--cache-dir", help="Where HTTP downloads go")]
KeepDownloadsOpt = Annotated[bool, typer.Option("--keep-downloads/--no-keep-downloads")]
FormatOpt = Annotated[Literal["native", "rowbinary"], typer.Option("--format", help="HTTP insert body format")]
StateOpt = Annotated[Path | None, typer.Option("--state", help="Ledger file (default: next to the target)")]
OnNanOpt = Annotated[Literal["fail-shard", "skip-row"], typer.Option("--on-nan")]
MaxRetriesOpt = Annotated[int, typer.Option("--max-retries", min=0)]
RetryMaxSecondsOpt = Annotated[float, typer.Option("--retry-max-seconds", min=0.0)]
DrainSecondsOpt = Annotated[float, typer.Option("--drain-seconds", min=0.0)]
LogFormatOpt = Annotated[Literal["text", "json"], typer.Option("--log-format")]
