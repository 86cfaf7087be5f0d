"""The daemon's own gauges and counters, on the one registry /metrics serves (ingest/core/metrics.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from ingest.core.metrics import REGISTRY

LAST_POLL = Gauge(
    "laion_ingest_last_poll_timestamp_seconds", "Unix time the daemon last finished a poll", registry=REGISTRY
)
POLL_ERRORS = Counter(
    "laion_ingest_poll_errors", "Polls that ended in an error (the daemon backs off, then retries)", registry=REGISTRY
)
SHARDS_PENDING = Gauge(
    "laion_ingest_shards_pending",
    "Shards available at the source that the last poll set out to load",
    registry=REGISTRY,
)

INDEX_UNCOVERED_ROWS = Gauge(
    "laion_ingest_index_uncovered_rows", "Rows in parts the vector index does not cover yet", registry=REGISTRY
)
INDEX_UNCOVERED_PARTS = Gauge(
    "laion_ingest_index_uncovered_parts", "Active parts the vector index does not cover yet", registry=REGISTRY
)
INDEX_BUILDS = Counter(
    "laion_ingest_index_rematerializations",
    "Scheduled MATERIALIZE INDEX runs that built the index for uncovered parts",
    registry=REGISTRY,
)
INDEX_ROWS_BUILT = Counter(
    "laion_ingest_index_rows_built", "Rows whose parts got their vector index from a scheduled run", registry=REGISTRY
)
