"""`laion-ingest daemon`: flags → a RunConfig and the daemon's own options, then the daemon runs until stopped."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from ingest.cli.flags import LoadFlags, run_config, with_load_flags
from ingest.cli.serve_command import AllowUrlsOpt, IndexNameOpt, WeightsOpt
from ingest.cli.support import (
    install_stop_signals,
    run_async,
    setup_logging,
)
from ingest.core.plan import parse_shard_spec
from ingest.daemon.service import LAION_SHARDS, Daemon, DaemonOptions, pipeline_drain_seconds
from ingest.serve.engine import ServeOptions
from ingest.serve.service import HttpOptions, ServeSpec


@with_load_flags
def daemon_command(
    shards: Annotated[
        str | None,
        typer.Option("--shards", help="Shards to watch for, e.g. 0-409 (default: all in a local dir; 0-409 over HTTP)"),
    ] = None,
    poll_seconds: Annotated[float, typer.Option("--poll-seconds", min=0.1, help="Seconds between polls")] = 30.0,
    http_host: Annotated[str, typer.Option("--http-host", help="Address for /healthz /readyz /metrics")] = "0.0.0.0",
    http_port: Annotated[int, typer.Option("--http-port", min=0, max=65535, help="Port for /metrics")] = 9108,
    index_every: Annotated[
        float,
        typer.Option(
            "--index-every",
            min=0.0,
            help="Seconds between builds of the vector index for new parts (0 = off); merges then skip the index",
        ),
    ] = 0.0,
    serve: Annotated[
        bool, typer.Option("--serve", help="Also answer clip-retrieval searches on the table (as `serve` does)")
    ] = False,
    serve_host: Annotated[str, typer.Option("--serve-host", help="Address of the search service")] = "127.0.0.1",
    serve_port: Annotated[
        int, typer.Option("--serve-port", min=0, max=65535, help="Port of the search service")
    ] = 1234,
    index_name: IndexNameOpt = None,
    weights: WeightsOpt = None,
    allow_image_urls: AllowUrlsOpt = False,
    *,
    flags: LoadFlags,
) -> None:
    """Watch SOURCE and load each new shard into TARGET; serve /healthz /readyz /metrics on --http-port."""
    setup_logging(flags.log_format)
    is_http = flags.source.startswith(("http://", "https://"))
    shard_spec = shards if shards is not None else (LAION_SHARDS if is_http else None)
    drain_seconds = flags.drain_seconds
    settings = run_config(
        flags, shards=(), progress=False, drain_seconds=pipeline_drain_seconds(drain_seconds), steady=True
    )
    opts = DaemonOptions(
        candidates=tuple(parse_shard_spec(shard_spec)) if shard_spec is not None else None,
        poll_seconds=poll_seconds,
        http_host=http_host,
        http_port=http_port,
        drain_seconds=drain_seconds,
        index_every=index_every,
        serve=ServeSpec(
            ServeOptions(index_name=index_name or settings.table.table),
            HttpOptions(host=serve_host, port=serve_port, weights=weights, allow_image_urls=allow_image_urls),
        )
        if serve
        else None,
    )

    async def main() -> int:
        stop = asyncio.Event()
        install_stop_signals(stop)
        return await Daemon(settings, opts, stop).run()

    raise typer.Exit(run_async(main()))
