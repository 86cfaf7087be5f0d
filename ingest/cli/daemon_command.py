"""`laion-ingest daemon`: flags → a RunConfig and the daemon's own options, then the daemon runs until stopped."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from ingest.cli.options import (
    BatchRowsOpt,
    CacheDirOpt,
    CompressOpt,
    DimOpt,
    DownloadConcurrencyOpt,
    DrainSecondsOpt,
    EndpointUrlOpt,
    ExtraColumnsOpt,
    FormatOpt,
    InsertConcurrencyOpt,
    InsertModeOpt,
    KeepDownloadsOpt,
    LayoutOpt,
    LogFormatOpt,
    MaxRetriesOpt,
    OnNanOpt,
    QueueDepthOpt,
    RetryMaxSecondsOpt,
    SegmentBytesOpt,
    SegmentRowsOpt,
    SourceOpt,
    StateOpt,
    VectorCodecOpt,
    ZookeeperPathOpt,
    run_config,
)
from ingest.cli.support import (
    CaFileOpt,
    ClusterOpt,
    DatabaseOpt,
    InsecureOpt,
    NodeOpt,
    PasswordFileOpt,
    TableOpt,
    TargetOpt,
    UserOpt,
    install_stop_signals,
    run_async,
    setup_logging,
)
from ingest.core.config import DEFAULT_ZOOKEEPER_PATH, LAION_ROOT
from ingest.core.plan import BLOCK_ROWS, SEGMENT_BYTES, SEGMENT_ROWS, parse_shard_spec
from ingest.core.target import DEFAULT_TARGET
from ingest.daemon.service import LAION_SHARDS, Daemon, DaemonOptions, pipeline_drain_seconds


def daemon_command(
    source: SourceOpt = LAION_ROOT,
    shards: Annotated[
        str | None,
        typer.Option("--shards", help="Shards to watch for, e.g. 0-409 (default: all in a local dir; 0-409 over HTTP)"),
    ] = None,
    target: TargetOpt = DEFAULT_TARGET,
    table: TableOpt = "laion",
    database: DatabaseOpt = None,
    poll_seconds: Annotated[float, typer.Option("--poll-seconds", min=0.1, help="Seconds between polls")] = 30.0,
    http_host: Annotated[str, typer.Option("--http-host", help="Address for /healthz /readyz /metrics")] = "0.0.0.0",
    http_port: Annotated[int, typer.Option("--http-port", min=0, max=65535, help="Port for /metrics")] = 9108,
    batch_rows: BatchRowsOpt = BLOCK_ROWS,
    segment_rows: SegmentRowsOpt = SEGMENT_ROWS,
    segment_bytes: SegmentBytesOpt = SEGMENT_BYTES,
    queue_depth: QueueDepthOpt = 2,
    download_concurrency: DownloadConcurrencyOpt = 2,
    insert_concurrency: InsertConcurrencyOpt = 2,
    dim: DimOpt = None,
    layout: LayoutOpt = "laion400m",
    extra_columns: ExtraColumnsOpt = None,
    vector_codec: VectorCodecOpt = None,
    endpoint_url: EndpointUrlOpt = None,
    cache_dir: CacheDirOpt = Path("./laion-cache"),
    keep_downloads: KeepDownloadsOpt = False,
    insert_format: FormatOpt = "native",
    compress: CompressOpt = "auto",
    user: UserOpt = None,
    password_file: PasswordFileOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    state: StateOpt = None,
    on_nan: OnNanOpt = "fail-shard",
    max_retries: MaxRetriesOpt = 8,
    retry_max_seconds: RetryMaxSecondsOpt = 30.0,
    drain_seconds: DrainSecondsOpt = 25.0,
    log_format: LogFormatOpt = "text",
    index_every: Annotated[
        float,
        typer.Option(
            "--index-every",
            min=0.0,
            help="Seconds between builds of the vector index for new parts (0 = off); merges then skip the index",
        ),
    ] = 0.0,
    cluster: ClusterOpt = None,
    insert_mode: InsertModeOpt = "distributed",
    node: NodeOpt = None,
    zookeeper_path: ZookeeperPathOpt = DEFAULT_ZOOKEEPER_PATH,
) -> None:
    """Watch SOURCE and load each new shard into TARGET; serve /healthz /readyz /metrics on --http-port."""
    setup_logging(log_format)
    is_http = source.startswith(("http://", "https://"))
    shard_spec = shards if shards is not None else (LAION_SHARDS if is_http else None)
    settings = run_config(
        source=source,
        shards=(),
        target=target,
        table=table,
        database=database,
        batch_rows=batch_rows,
        segment_rows=segment_rows,
        segment_bytes=segment_bytes,
        queue_depth=queue_depth,
        download_concurrency=download_concurrency,
        insert_concurrency=insert_concurrency,
        dim=dim,
        layout=layout,
        extra_columns=extra_columns,
        vector_codec=vector_codec,
        endpoint_url=endpoint_url,
        cache_dir=cache_dir,
        keep_downloads=keep_downloads,
        insert_format=insert_format,
        compress=compress,
        user=user,
        password_file=password_file,
        ca_file=ca_file,
        insecure=insecure,
        state=state,
        on_nan=on_nan,
        max_retries=max_retries,
        retry_max_seconds=retry_max_seconds,
        drain_seconds=pipeline_drain_seconds(drain_seconds),
        progress=False,
        cluster=cluster,
        insert_mode=insert_mode,
        nodes=node,
        zookeeper_path=zookeeper_path,
    )
    opts = DaemonOptions(
        candidates=tuple(parse_shard_spec(shard_spec)) if shard_spec is not None else None,
        poll_seconds=poll_seconds,
        http_host=http_host,
        http_port=http_port,
        drain_seconds=drain_seconds,
        index_every=index_every,
    )

    async def main() -> int:
        stop = asyncio.Event()
        install_stop_signals(stop)
        return await Daemon(settings, opts, stop).run()

    raise typer.Exit(run_async(main()))
