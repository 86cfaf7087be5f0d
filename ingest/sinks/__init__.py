"""Targets behind one `Sink` protocol: the embedded chdb, a ClickHouse server over HTTP, and a cluster of them
(Distributed over node-local tables). Each maps its library's exceptions into the error tree at this edge. Imports
`ingest.core` and `ingest.clickhouse`, never stages, load or the edge.
"""

from __future__ import annotations

from ingest.core.config import TargetConfig
from ingest.core.errors import ConfigError
from ingest.sinks.base import Sink


def open_sink(target: TargetConfig) -> Sink:
    """Build the sink a target names (connect() is still the caller's to await)."""
    if target.cluster is not None:
        if target.spec.kind != "http":
            raise ConfigError("--cluster needs an http(s):// ClickHouse target (chdb is a single embedded node)")
        from ingest.sinks.cluster import ClusterSink

        cluster: Sink = ClusterSink(target)
        return cluster
    if target.insert_mode == "local":
        raise ConfigError("--insert-mode local needs --cluster NAME (it writes to the cluster's local tables)")
    if target.spec.kind == "chdb":
        from ingest.sinks.chdb import ChdbSink

        return ChdbSink(target)
    from ingest.sinks.http import HttpSink

    sink: Sink = HttpSink(target)
    return sink
