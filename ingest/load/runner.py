"""One ingest run from settings to result: open source, sink and ledger, run the pipeline, close in order."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import orjson

from ingest.clickhouse.sql import vector_dim_sql
from ingest.core.config import RunConfig
from ingest.core.errors import (
    BadShardError,
    SchemaMismatchError,
    SourceError,
    UnsupportedFeatureError,
    UsageError,
)
from ingest.core.schema import DEFAULT_DIM
from ingest.core.tasks import stopped
from ingest.load.ledger import Ledger, default_ledger_path
from ingest.load.pipeline import Pipeline, RunResult
from ingest.load.progress import LogReporter, Reporter
from ingest.sinks import open_sink
from ingest.sinks.base import CountsBytes, Sink, parse_version
from ingest.stages.probe import infer_schema, needs_probe, schema_from_flags
from ingest.stages.source import Source, open_source

log = logging.getLogger(__name__)


def ledger_for(settings: RunConfig) -> Ledger:
    t = settings.target.spec
    path = settings.state_path or default_ledger_path(t.kind, t.path, t.base_url, settings.table.key)
    return Ledger.load(path, settings.table.key)


async def prepare_sink(settings: RunConfig) -> Sink:
    """Connect, say plainly what an old server lacks, make sure the table is ours."""
    sink = await asyncio.to_thread(open_sink, settings.target)  # imports the client library (aiohttp: ~0.1 s)
    try:
        info = await sink.connect()
        if info.missing:
            log.warning(
                "ClickHouse %s at %s lacks: %s (loading works; %s)",
                info.version,
                settings.target.display(),
                ", ".join(info.missing),
                "search/index need a newer server or the embedded chdb target",
            )
        if settings.target.schema.vector_codec and parse_version(info.version) < (19, 1):
            raise UnsupportedFeatureError(f"ClickHouse {info.version} has no column codecs: drop --vector-codec")
        await sink.ensure_table(settings.table)
        await check_table_dim(sink, settings)
    except BaseException:
        await sink.close()
        raise
    return sink


PROBE_SHARDS = 8
"""Shards tried, in order, for the table's schema before giving up (broken ones are skipped)."""


async def resolve_schema(settings: RunConfig, source: Source, shards: list[int]) -> RunConfig:
    """Settings whose target schema has the dimension (--dim, else the first readable shard's npy header) and
    the extra columns typed from that shard's parquet schema."""
    load = settings.load
    schema = None
    if not needs_probe(load):
        schema = schema_from_flags(load, load.dim or DEFAULT_DIM)
    for shard in shards[:PROBE_SHARDS] if schema is None else []:
        try:
            files = await source.fetch(shard)
            schema = await asyncio.to_thread(infer_schema, files, load)
            break
        except (BadShardError, SourceError) as exc:
            if exc.retriable:
                raise
            log.debug("shard %d cannot tell the table's schema (%s); trying the next", shard, exc)
    if schema is None:
        if load.extra_columns:
            raise UsageError("--extra-columns: no readable shard to read the columns' types from")
        schema = schema_from_flags(load, load.dim or DEFAULT_DIM)
    elif load.dim is None:
        log.debug("vectors are %d-d (from the first shard's npy header)", schema.dim)
    return replace(settings, target=replace(settings.target, schema=schema))


async def check_table_dim(sink: Sink, settings: RunConfig) -> None:
    """An existing table holding vectors of another dimension is refused before anything is inserted."""
    rows = await sink.query(vector_dim_sql(settings.table))
    dim = settings.target.schema.dim
    if rows and int(rows[0]["d"]) != dim:
        raise SchemaMismatchError(
            f"table {settings.table.key} holds {int(rows[0]['d'])}-d vectors; this source's are {dim}-d "
            "(use another --table)"
        )


async def run_ingest(
    settings: RunConfig, stop: asyncio.Event | None = None, reporter: Reporter | None = None
) -> RunResult:
    ledger = ledger_for(settings)
    source = open_source(settings.source)
    try:
        shards = list(settings.shards)
        await source.check_root(shards[0] if shards else None)
        todo = [s for s in shards if not ledger.is_complete(s)]
        settings = await resolve_schema(settings, source, todo + [s for s in shards if s not in todo])
        if not todo and shards and needs_probe(settings.load):
            await source.release(shards[0])  # fetched only to learn the schema: nothing left to load
    except BaseException:
        await source.close()
        raise
    opening = asyncio.create_task(prepare_sink(settings))  # the first shard is validated while it opens
    try:
        pipeline = Pipeline(settings, opening, source, ledger, reporter or LogReporter(), stop)
        result = await pipeline.run(list(settings.shards))
        sink = pipeline.sink
        result.bytes_sent = sink.bytes_sent if isinstance(sink, CountsBytes) else 0
    finally:
        await source.close()
        await _closed(opening)
    if settings.report_path is not None:
        write_report(settings, result)
    return result


async def _closed(opening: asyncio.Task[Sink]) -> None:
    """Close the sink the task opened; a task still opening is cancelled (prepare_sink closes what it opened)."""
    await stopped(opening)
    if not opening.cancelled() and opening.exception() is None:
        await opening.result().close()


def write_report(settings: RunConfig, result: RunResult) -> None:
    """The quarantine report: which shards were refused and why (JSON, for people and scripts)."""
    assert settings.report_path is not None
    doc = {
        "table": settings.table.key,
        "shards_done": sorted(result.shards_done),
        "quarantined": [{"shard": k, "reason": v} for k, v in sorted(result.shards_bad.items())],
        "rows_inserted": result.rows_inserted,
        "bytes_sent": result.bytes_sent,
    }
    settings.report_path.parent.mkdir(parents=True, exist_ok=True)
    settings.report_path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))


def summary_line(result: RunResult) -> str:
    rows = result.rows_inserted
    rate = rows / result.seconds if result.seconds > 0 else 0.0
    text = (
        f"{'interrupted' if result.interrupted else 'done'}: {len(result.shards_done)} shards, "
        f"{rows:,} rows inserted in {result.seconds:.1f} s ({rate:,.0f} rows/s)"
    )
    if result.bytes_sent and rows:
        text += f", {result.bytes_sent / rows:,.0f} bytes/row sent ({result.bytes_sent / 1e6:,.1f} MB)"
    if result.rows_already:
        text += f", {result.rows_already:,} rows already present"
    if result.shards_bad:
        text += f"; {len(result.shards_bad)} bad shard(s): {', '.join(str(s) for s in sorted(result.shards_bad))}"
    return text
