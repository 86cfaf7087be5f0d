"""Option types for the loading knobs that `run` and `daemon` share, so both spell and check them alike.

Flag names, bounds and help match `laion-ingest run` exactly (tests/test_daemon.py compares the two commands).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from ingest.cli.support import node_endpoints
from ingest.core.config import (
    DEFAULT_ZOOKEEPER_PATH,
    Compression,
    InsertFormat,
    InsertMode,
    LoadConfig,
    NanPolicy,
    RunConfig,
    SourceConfig,
    TargetConfig,
    read_credentials,
    resolve_table,
    validate_zookeeper_path,
)
from ingest.core.layout import parse_layout
from ingest.core.plan import SEGMENT_BYTES, SEGMENT_ROWS
from ingest.core.retry import RetryPolicy
from ingest.core.schema import VectorCodec, parse_extra_columns
from ingest.core.target import parse_target

SourceOpt = Annotated[
    str, typer.Option("--source", "-s", help="Local dir, http(s) mirror root, or s3:// gs:// hf:// object-store root")
]
BatchRowsOpt = Annotated[int, typer.Option("--batch-rows", min=1, help="Rows per block: the unit read and encoded")]
SegmentRowsOpt = Annotated[
    int, typer.Option("--segment-rows", min=1, help="Rows per segment: one INSERT = one part, the unit committed")
]
SegmentBytesOpt = Annotated[
    int, typer.Option("--segment-bytes", min=1, help="Byte bound of a segment (under ClickHouse's 256 MiB squash)")
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
CompressOpt = Annotated[
    Literal["auto", "none", "zstd", "gzip"],
    typer.Option("--compress", help="HTTP insert body compression (auto: none on loopback, zstd elsewhere)"),
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


def run_config(
    *,
    source: str,
    shards: tuple[int, ...],
    target: str,
    table: str,
    database: str | None,
    batch_rows: int,
    queue_depth: int,
    download_concurrency: int,
    insert_concurrency: int,
    dim: int | None,
    cache_dir: Path,
    keep_downloads: bool,
    insert_format: InsertFormat,
    user: str | None,
    password_file: Path | None,
    ca_file: Path | None,
    insecure: bool,
    state: Path | None,
    on_nan: NanPolicy,
    max_retries: int,
    retry_max_seconds: float,
    drain_seconds: float,
    progress: bool,
    report: Path | None = None,
    segment_rows: int = SEGMENT_ROWS,
    segment_bytes: int = SEGMENT_BYTES,
    cluster: str | None = None,
    insert_mode: InsertMode = "distributed",
    finalize: bool = False,
    layout: str = "laion400m",
    extra_columns: str | None = None,
    vector_codec: VectorCodec | None = None,
    endpoint_url: str | None = None,
    compress: Compression = "auto",
    nodes: list[str] | None = None,
    zookeeper_path: str = DEFAULT_ZOOKEEPER_PATH,
) -> RunConfig:
    """The one place flags become config objects, shared by `run` and `daemon`."""
    spec = parse_target(target)
    ref = resolve_table(spec, database, table)
    retry = RetryPolicy(max_retries=max_retries, max_seconds=retry_max_seconds)
    return RunConfig(
        shards=shards,
        table=ref,
        target=TargetConfig(
            spec=spec,
            database=ref.database,
            credentials=read_credentials(user, password_file),
            ca_file=ca_file,
            insecure=insecure,
            insert_format=insert_format,
            cluster=cluster,
            insert_mode=insert_mode,
            connections=insert_concurrency,
            compress=compress,
            nodes=node_endpoints(cluster, nodes),
            zookeeper_path=validate_zookeeper_path(zookeeper_path),
        ),
        source=SourceConfig(
            root=source,
            cache_dir=cache_dir,
            keep_downloads=keep_downloads,
            download_concurrency=download_concurrency,
            retry=retry,
            layout=parse_layout(layout),
            endpoint_url=endpoint_url,
        ),
        load=LoadConfig(
            dim=dim,
            extra_columns=parse_extra_columns(extra_columns),
            vector_codec=vector_codec,
            batch_rows=batch_rows,
            segment_rows=segment_rows,
            segment_bytes=segment_bytes,
            queue_depth=queue_depth,
            insert_concurrency=insert_concurrency,
            on_nan=on_nan,
            retry=retry,
            drain_seconds=drain_seconds,
        ),
        state_path=state,
        report_path=report,
        progress=progress,
        finalize=finalize,
    )
