"""Targets behind one Protocol: the embedded chdb and ClickHouse over HTTP."""

from __future__ import annotations

from ingest.settings import Settings
from ingest.sinks.base import Sink


def open_sink(settings: Settings) -> Sink:
    """Build the sink a target string names (connect() is still the caller's to await)."""
    if settings.target.kind == "chdb":
        from ingest.sinks.chdb import ChdbSink

        return ChdbSink(settings)
    from ingest.sinks.http import HttpSink

    sink: Sink = HttpSink(settings)
    return sink
