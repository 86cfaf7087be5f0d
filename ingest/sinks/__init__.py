"""Targets behind one Protocol: the embedded chdb and ClickHouse over HTTP."""

from __future__ import annotations

from ingest.errors import ConfigError
from ingest.settings import Settings
from ingest.sinks.base import Sink


def open_sink(settings: Settings) -> Sink:
    """Build the sink a target string names (connect() is still the caller's to await)."""
    if settings.cluster is not None:
        if settings.target.kind != "http":
            raise ConfigError("--cluster needs an http(s):// ClickHouse target (chdb is a single embedded node)")
        from ingest.sinks.cluster import ClusterSink

        cluster: Sink = ClusterSink(settings)
        return cluster
    if settings.insert_mode == "local":
        raise ConfigError("--insert-mode local needs --cluster NAME (it writes to the cluster's local tables)")
    if settings.target.kind == "chdb":
        from ingest.sinks.chdb import ChdbSink

        return ChdbSink(settings)
    from ingest.sinks.http import HttpSink

    sink: Sink = HttpSink(settings)
    return sink
