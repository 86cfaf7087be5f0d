"""The daemon's small HTTP face: /healthz (liveness), /readyz (readiness), /metrics (Prometheus).

It runs on the daemon's own event loop, so /healthz answering at all proves the loop is not stuck. What "ready"
means is the daemon's business: it hands in a coroutine that returns None when ready, else the reason why not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ingest.core.errors import IngestError
from ingest.core.metrics import REGISTRY
from ingest.serve.service import listen

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[str | None]]
"""Returns None when ready, else a short reason (shown in the 503 body; never carries secrets)."""


def make_app(ready: ReadyCheck, ready_timeout: float) -> web.Application:
    """Routes only; no I/O happens until a request arrives."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        try:
            reason = await asyncio.wait_for(ready(), ready_timeout)
        except TimeoutError:
            reason = f"target did not answer within {ready_timeout:g} s"
        except IngestError as exc:
            reason = str(exc)
        if reason is None:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {reason}\n")

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_server(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Listen on host:port (a port in use or a bad address is a config error, said in one line)."""
    runner = await listen(app, host, port, " for /metrics")
    bound = runner.addresses[0][1] if runner.addresses else port  # the real port when asked for port 0
    log.info("serving /healthz /readyz /metrics on http://%s:%d", host, bound)
    return runner
