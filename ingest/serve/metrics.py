"""Prometheus metrics of the search service: requests by route and status, latency, errors by kind.

Its own registry: a daemon that also serves keeps its loading metrics apart, and both are exported together.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry()
ROUTES = ("/indices-list", "/knn-service", "/metadata", "/healthz", "/metrics")

REQUESTS = Counter(
    "clip_serve_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=REGISTRY
)
LATENCY = Histogram(
    "clip_serve_request_seconds",
    "Seconds from request to response, by route",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
ERRORS = Counter(
    "clip_serve_errors",
    "Requests that failed, by kind (client, clickhouse, internal)",
    ["route", "kind"],
    registry=REGISTRY,
)


def route_label(request: web.Request) -> str:
    """A fixed set of labels: a client cannot grow the metrics with made-up paths."""
    return request.path if request.path in ROUTES else "other"
