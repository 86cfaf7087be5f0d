"""One ingest run from settings to result: open source, sink and ledger, run the pipeline, close in order."""

from __future__ import annotations

import asyncio
import logging

import orjson

from ingest.core.config import RunConfig
from ingest.load.ledger import Ledger, default_ledger_path
from ingest.load.pipeline import Pipeline, RunResult
from ingest.load.progress import LogReporter, Reporter
from ingest.sinks import open_sink
from ingest.sinks.base import CountsBytes, Sink
from ingest.stages.source import open_source

log = logging.getLogger("ingest")


def ledger_for(settings: RunConfig) -> Ledger:
    t = settings.target.spec
    path = settings.state_path or default_ledger_path(t.kind, t.path, t.base_url, settings.table.key)
    return Ledger.load(path, settings.table.key)


async def prepare_sink(settings: RunConfig) -> Sink:
    """Connect, say plainly what an old server lacks, make sure the table is ours."""
    sink = open_sink(settings.target, settings.load.batch_rows)
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
        await sink.ensure_table(settings.table)
    except BaseException:
        await sink.close()
        raise
    return sink


async def run_ingest(
    settings: RunConfig, stop: asyncio.Event | None = None, reporter: Reporter | None = None
) -> RunResult:
    ledger = ledger_for(settings)
    sink = await prepare_sink(settings)
    source = open_source(settings.source)
    try:
        pipeline = Pipeline(settings, sink, source, ledger, reporter or LogReporter(), stop)
        result = await pipeline.run(list(settings.shards))
        result.bytes_sent = sink.bytes_sent if isinstance(sink, CountsBytes) else 0
    finally:
        await source.close()
        await sink.close()
    if settings.report_path is not None:
        write_report(settings, result)
    return result


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
