"""Option types for the loading knobs, spelled and checked once (`cli/flags.py` gathers the shared ones)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

SourceOpt = Annotated[
    str, typer.Option("--source", "-s", help="Local dir, http(s) mirror root, or s3:// gs:// hf:// object-store root")
]
BatchRowsOpt = Annotated[int, typer.Option("--batch-rows", min=1, help="Rows per block: the unit read and encoded")]
SegmentRowsOpt = Annotated[
    int, typer.Option("--segment-rows", min=1, help="Most rows in a segment: one INSERT = one part, the unit committed")
]
SegmentBytesOpt = Annotated[
    int,
    typer.Option("--segment-bytes", min=1, help="Byte bound of a segment, estimated from dim and the shard's texts"),
]
QueueDepthOpt = Annotated[int, typer.Option("--queue-depth", min=1, help="Blocks read ahead, over all inserts")]
DownloadConcurrencyOpt = Annotated[int, typer.Option("--download-concurrency", min=1)]
InsertConcurrencyOpt = Annotated[int, typer.Option("--insert-concurrency", min=1)]
DimOpt = Annotated[
    int | None, typer.Option("--dim", min=1, help="Embedding dimension (default: the first shard's npy header)")
]
LayoutOpt = Annotated[
    str,
    typer.Option(
        "--layout",
        help="laion400m, laion5b, or IMG,TEXT,META path templates with {shard} / {shard:04d}",
    ),
]
ExtraColumnsOpt = Annotated[
    str | None, typer.Option("--extra-columns", help="Metadata columns to load too, e.g. key,width,height")
]
VectorCodecOpt = Annotated[
    Literal["none", "lz4", "zstd"] | None,
    typer.Option("--vector-codec", help="CODEC of the embedding columns (default: the server's, as the tutorial)"),
]
EndpointUrlOpt = Annotated[
    str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint (default: env AWS_ENDPOINT_URL)")
]
CacheDirOpt = Annotated[Path, typer.Option("--cache-dir", help="Where HTTP downloads go")]
KeepDownloadsOpt = Annotated[bool, typer.Option("--keep-downloads/--no-keep-downloads")]
FormatOpt = Annotated[Literal["native", "rowbinary"], typer.Option("--format", help="HTTP insert body format")]
StateOpt = Annotated[Path | None, typer.Option("--state", help="Ledger file (default: next to the target)")]
OnNanOpt = Annotated[Literal["fail-shard", "skip-row"], typer.Option("--on-nan")]
MaxRetriesOpt = Annotated[int, typer.Option("--max-retries", min=0)]
RetryMaxSecondsOpt = Annotated[float, typer.Option("--retry-max-seconds", min=0.0)]
DrainSecondsOpt = Annotated[float, typer.Option("--drain-seconds", min=0.0)]
ReadTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--read-timeout",
        min=0.1,
        help="Seconds an HTTP request to ClickHouse may go without a byte of reply before it counts as lost (an "
        "insert's reply comes only once its part is written: keep it above that)",
    ),
]
CompressOpt = Annotated[
    Literal["auto", "none", "zstd", "gzip"],
    typer.Option("--compress", help="HTTP insert body compression (auto: none on loopback, zstd elsewhere)"),
]
MergesOpt = Annotated[
    Literal["auto", "during", "deferred"],
    typer.Option(
        "--merges",
        help="Background merges while a run loads: auto = deferred (stopped until the run ends) into the embedded "
        "target or one server, during on a --cluster and in the daemon; a killed run's stop is lifted by the next "
        "run, daemon or index",
    ),
]
LogFormatOpt = Annotated[Literal["text", "json"], typer.Option("--log-format")]
InsertModeOpt = Annotated[Literal["distributed", "local"], typer.Option("--insert-mode")]
ZookeeperPathOpt = Annotated[
    str,
    typer.Option(
        "--zookeeper-path",
        help="Coordinator path prefix of a replicated {table}_local (holds {shard}; /DB/TABLE is appended)",
    ),
]
