"""`laion-ingest serve`: clip-retrieval's back end (`/knn-service`, `/metadata`, `/indices-list`) on a table."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from ingest.cli.flags import QueryFlags, query_config, with_query_flags
from ingest.cli.support import install_stop_signals, run_async, setup_logging
from ingest.clickhouse.vector_sql import EF_SEARCH_SETTING
from ingest.core.config import QueryConfig
from ingest.core.errors import UsageError
from ingest.serve.engine import ServeOptions
from ingest.serve.service import HttpOptions, serve_until
from ingest.vector.clip_client import WEIGHTS_ENV

HostOpt = Annotated[str, typer.Option("--host", help="Address to listen on (loopback unless you mean it)")]
PortOpt = Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (clip-back's is 1234)")]
IndexNameOpt = Annotated[
    str | None, typer.Option("--index-name", help="Name clients use as indice_name (default: the table's name)")
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights", envvar=WEIGHTS_ENV, help="CLIP ViT-B/32 weights for text/image queries ('random' to test)"
    ),
]
EfOpt = Annotated[
    int | None, typer.Option("--ef-search", min=1, help=f"{EF_SEARCH_SETTING} (default: the tuned one, if recorded)")
]
IndexDistancesOpt = Annotated[
    bool,
    typer.Option(
        "--index-distances",
        help="Answer the index's own (quantized) distances instead of rescoring hits on their stored vectors: faster",
    ),
]
AllowUrlsOpt = Annotated[
    bool, typer.Option("--allow-image-urls", help="Fetch image_url queries (off: it lets clients make us fetch URLs)")
]
UrlBytesOpt = Annotated[int, typer.Option("--image-url-max-bytes", min=1, help="Largest image_url download")]
UrlTimeoutOpt = Annotated[float, typer.Option("--image-url-timeout", min=0.1, help="Seconds an image_url may take")]
BodyLimitOpt = Annotated[int, typer.Option("--max-body-bytes", min=1024, help="Largest request body accepted")]
ConnectionsOpt = Annotated[int, typer.Option("--connections", min=1, help="Queries in flight to ClickHouse at once")]


def serve_options(
    flags: QueryFlags, index_name: str | None, ef_search: int | None, index_distances: bool
) -> tuple[QueryConfig, ServeOptions]:
    q = query_config(flags)
    return q, ServeOptions(index_name=index_name or q.table.table, ef_search=ef_search, rescore=not index_distances)


@with_query_flags
def serve_command(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 1234,
    index_name: IndexNameOpt = None,
    weights: WeightsOpt = None,
    ef_search: EfOpt = None,
    index_distances: IndexDistancesOpt = False,
    allow_image_urls: AllowUrlsOpt = False,
    image_url_max_bytes: UrlBytesOpt = 10 * 1024 * 1024,
    image_url_timeout: UrlTimeoutOpt = 10.0,
    max_body_bytes: BodyLimitOpt = 8 * 1024 * 1024,
    connections: ConnectionsOpt = 16,
    *,
    flags: QueryFlags,
) -> None:
    """Serve TABLE to clip-front, ClipClient and scripts over clip-retrieval's protocol (read-only)."""
    setup_logging()
    if flags.cluster is not None:
        raise UsageError("serve answers from one server's table; --cluster is not supported yet")
    q, opts = serve_options(flags, index_name, ef_search, index_distances)
    http = HttpOptions(
        host=host,
        port=port,
        weights=weights,
        allow_image_urls=allow_image_urls,
        image_max_bytes=image_url_max_bytes,
        image_timeout=image_url_timeout,
        body_limit=max_body_bytes,
        connections=connections,
    )

    async def main() -> int:
        stop = asyncio.Event()
        install_stop_signals(stop)
        return await serve_until(q, opts, http, stop)

    raise typer.Exit(run_async(main()))
