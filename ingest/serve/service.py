"""Start and stop the search service: connect, learn the table, load the encoder, listen, serve until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from aiohttp import web

from ingest.core.config import QueryConfig
from ingest.core.errors import ConfigError, IngestError
from ingest.core.tasks import stopped
from ingest.serve.app import DEFAULT_BODY_LIMIT, Service, make_app
from ingest.serve.encoder import ClipEncoder
from ingest.serve.engine import Searcher, ServeOptions
from ingest.serve.fetch import ImageFetcher
from ingest.sinks import open_sink
from ingest.sinks.base import Sink

log = logging.getLogger(__name__)

REFRESH_SECONDS = 60.0
"""How often the facts of a growing table (rows, safe share) are learned again."""


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """Where the service listens and what it lets clients do."""

    host: str = "127.0.0.1"
    port: int = 1234
    weights: str | None = None
    allow_image_urls: bool = False
    image_max_bytes: int = 10 * 1024 * 1024
    image_timeout: float = 10.0
    body_limit: int = DEFAULT_BODY_LIMIT
    connections: int = 16
    """Queries in flight to ClickHouse at once."""


@dataclass(frozen=True, slots=True)
class ServeSpec:
    """Everything `serve` needs besides the table: what `daemon --serve` hands over."""

    opts: ServeOptions
    http: HttpOptions

    @property
    def parts(self) -> tuple[ServeOptions, HttpOptions]:
        return self.opts, self.http


async def refresh_quietly(searcher: Searcher | None) -> None:
    """Learn the table's facts again (if serving); on failure keep serving with the old ones."""
    if searcher is None:
        return
    try:
        await searcher.refresh()
    except IngestError as exc:
        log.warning("search keeps its old view of the table: %s", exc)


async def listen(app: web.Application, host: str, port: int, purpose: str = "") -> web.AppRunner:
    """Listen on host:port; a port in use or a bad address is a config error, said in one line (the daemon's
    /metrics endpoint starts the same way)."""
    # handler_cancellation: a client that hangs up cancels its request, and with it the ClickHouse query
    runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port}{purpose}: {exc.strerror or exc}") from None
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually bound (port 0 asks the kernel for a free one)."""
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    raise ConfigError("the service is not listening")


@contextlib.asynccontextmanager
async def running_service(
    q: QueryConfig, opts: ServeOptions, http: HttpOptions, sink: Sink | None = None
) -> AsyncIterator[tuple[Service, int]]:
    """A listening service; yields it and the port. `sink`: an already connected one (the daemon's), else ours."""
    own = sink is None
    if sink is None:
        sink = open_sink(replace(q.target, connections=http.connections))
    encoder = ClipEncoder(http.weights) if http.weights else None
    fetcher = ImageFetcher(http.allow_image_urls, http.image_max_bytes, http.image_timeout)
    runner: web.AppRunner | None = None
    try:
        if own:
            await sink.connect()
        searcher = Searcher(sink, q, opts)
        facts = await searcher.refresh()
        if encoder is not None:
            await encoder.start()
        service = Service(searcher, opts.index_name, encoder, fetcher)
        runner = await listen(make_app(service, http.body_limit), http.host, http.port)
        port = bound_port(runner)
        log.info(
            "serving %s as index %r on http://%s:%d (%s; max %d results; text/image queries %s)",
            q.table.key,
            opts.index_name,
            http.host,
            port,
            ", ".join(
                f"{c}: {'index ' + str(facts.indexed[c]) if facts.indexed[c] else 'brute force'}" for c in facts.dims
            ),
            facts.max_limit,
            "on" if encoder is not None else "off (no --weights)",
        )
        slow = searcher.slow_layout()
        if slow is not None:
            log.warning("%s", slow)
        yield service, port
    finally:
        if runner is not None:
            await runner.cleanup()
        await fetcher.close()
        if encoder is not None:
            encoder.close()
        if own:
            await sink.close()


async def refresh_every(searcher: Searcher, stop: asyncio.Event, seconds: float = REFRESH_SECONDS) -> None:
    """Learn a growing table's facts again now and then; a failed refresh keeps the old facts."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        if stop.is_set():
            return
        await refresh_quietly(searcher)


async def serve_until(q: QueryConfig, opts: ServeOptions, http: HttpOptions, stop: asyncio.Event) -> int:
    """`laion-ingest serve`: listen until SIGINT/SIGTERM sets `stop`."""
    async with running_service(q, opts, http) as (service, _port):
        refresher = asyncio.create_task(refresh_every(service.searcher, stop))
        await stop.wait()
        await stopped(refresher)
    return 0
