"""Prometheus metrics, updated by the pipeline always (cheap) and served by the daemon's /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

ROWS_INSERTED = Counter("laion_ingest_rows_inserted", "Rows inserted into the target", registry=REGISTRY)
BYTES_SENT = Counter(
    "laion_ingest_bytes_sent", "Insert body bytes sent to an HTTP target, after compression", registry=REGISTRY
)
BYTES_DOWNLOADED = Counter("laion_ingest_bytes_downloaded", "Bytes downloaded from the source", registry=REGISTRY)
SHARDS = Counter("laion_ingest_shards", "Shards finished, by outcome", ["status"], registry=REGISTRY)
BATCH_INSERT_SECONDS = Histogram(
    "laion_ingest_batch_insert_seconds",
    "Seconds per batch insert",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("laion_ingest_queue_depth", "Batches waiting for an insert worker", registry=REGISTRY)
RETRIES = Counter("laion_ingest_retries", "Retried operations against source or target", registry=REGISTRY)

for _status in ("done", "failed", "quarantined"):
    SHARDS.labels(status=_status)
