"""The HTTP face of the search service: clip-retrieval 2.45.0's routes on aiohttp, CORS as clip-back sends it.

Every failure a client can cause is a 4xx with one JSON line `{"error": "..."}`; a failure of ours or of
ClickHouse is a 502/503 with one line too, never a traceback, and the service stays up. clip-back wraps the whole
app in flask-cors' defaults: the request's Origin is echoed back (or `*` without one), `Vary: Origin`, and a
preflight answers every method and the headers it asked for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ingest.core.errors import BadRequestError, IngestError, TransientTargetError
from ingest.serve.encoder import NO_WEIGHTS, ClipEncoder, b64_image
from ingest.serve.engine import Searcher
from ingest.serve.fetch import ImageFetcher
from ingest.serve.metrics import ERRORS, LATENCY, REGISTRY, REQUESTS, route_label
from ingest.serve.protocol import CAPPED_HEADER, IGNORED_HEADER, KnnRequest, json_body, parse_knn, parse_metadata

log = logging.getLogger(__name__)

CORS_METHODS = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"
DEFAULT_BODY_LIMIT = 8 * 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Service:
    """What the routes need: the searcher, the index name it answers to, an encoder if weights were given."""

    searcher: Searcher
    index_name: str
    encoder: ClipEncoder | None
    fetcher: ImageFetcher

    def check_index(self, name: str | None) -> None:
        if name is not None and name != self.index_name:
            raise BadRequestError(f"unknown indice_name {name[:60]!r}: this service has {self.index_name!r}", 404)


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json", headers=headers or {})


def error_response(message: str, status: int) -> web.Response:
    return json_response({"error": " ".join(message.split())}, status)


def cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.headers.get("Origin")
    response.headers["Access-Control-Allow-Origin"] = origin or "*"
    if origin:
        response.headers.add("Vary", "Origin")


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS, one-line errors and metrics around every route."""
    route = route_label(request)
    start = time.perf_counter()
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response: web.StreamResponse = web.Response(status=200)
        response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
        asked = request.headers.get("Access-Control-Request-Headers")
        if asked:
            response.headers["Access-Control-Allow-Headers"] = asked
    else:
        try:
            response = await handler(request)
        except BadRequestError as exc:
            response = error_response(str(exc), exc.status)
            ERRORS.labels(route=route, kind="client").inc()
        except web.HTTPException as exc:  # 404/405/413 of aiohttp itself
            response = error_response(exc.reason or "bad request", exc.status)
            ERRORS.labels(route=route, kind="client").inc()
        except TransientTargetError as exc:
            log.warning("%s: ClickHouse unavailable: %s", route, exc)
            response = error_response(f"ClickHouse is unavailable: {exc}", 503)
            ERRORS.labels(route=route, kind="clickhouse").inc()
        except IngestError as exc:
            log.warning("%s: %s", route, exc)
            response = error_response(str(exc), 502)
            ERRORS.labels(route=route, kind="clickhouse").inc()
        except Exception as exc:  # the last line of defence: one line, the service stays up
            log.exception("%s: internal error", route)
            response = error_response(f"internal error: {type(exc).__name__}", 500)
            ERRORS.labels(route=route, kind="internal").inc()
    cors_headers(request, response)
    REQUESTS.labels(route=route, status=str(response.status)).inc()
    LATENCY.labels(route=route).observe(time.perf_counter() - start)
    return response


async def read_json(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadRequestError(f"the body is over the {request.app['body_limit']}-byte limit", 413) from None
    return json_body(raw)


def make_app(service: Service, body_limit: int = DEFAULT_BODY_LIMIT) -> web.Application:
    """Routes only; the searcher is connected and its facts learned before the app is built."""

    async def indices_list(_: web.Request) -> web.Response:
        return json_response([service.index_name])

    async def knn_service(request: web.Request) -> web.Response:
        doc = await read_json(request)
        req = parse_knn(doc, service.searcher.facts.max_limit)
        service.check_index(req.indice_name)
        searcher = service.searcher
        column = searcher.column_for(req)
        literal = searcher.check_vector(column, await query_vector(service, req))
        answer = await searcher.knn(req, column, literal)
        headers = {}
        if req.ignored:
            headers[IGNORED_HEADER] = ", ".join(req.ignored)
            log.info("knn-service: ignored options %s (no such model or vectors here)", ", ".join(req.ignored))
        if answer.capped is not None:
            headers[CAPPED_HEADER] = str(answer.capped)
        return json_response(answer.results, headers=headers)

    async def metadata(request: web.Request) -> web.Response:
        req = parse_metadata(await read_json(request))
        service.check_index(req.indice_name)
        return json_response(await service.searcher.metadata(req.ids))

    async def healthz(_: web.Request) -> web.Response:
        try:
            await service.searcher.ping()
        except IngestError as exc:
            return web.Response(status=503, text=f"ClickHouse unavailable: {exc}\n")
        return web.Response(text="ok\n")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[guard], client_max_size=body_limit)
    app["body_limit"] = body_limit
    app.router.add_get("/indices-list", indices_list)
    app.router.add_post("/knn-service", knn_service)
    app.router.add_post("/metadata", metadata)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def query_vector(service: Service, req: KnnRequest) -> Any:
    """The request's vector: given, or from the CLIP encoder (text, base64 image, fetched image)."""
    if req.vector is not None:
        return req.vector
    if service.encoder is None:
        raise BadRequestError(NO_WEIGHTS)
    if req.text is not None:
        return await service.encoder.text(req.text)
    data = b64_image(req.image) if req.image is not None else await service.fetcher.fetch(req.image_url or "")
    return await service.encoder.image(data)
