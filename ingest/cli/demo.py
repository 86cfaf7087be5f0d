"""`laion-ingest demo`: the whole product in a minute, offline."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ingest.clickhouse.sql import count_sql
from ingest.core.config import RunConfig, SourceConfig, TargetConfig, resolve_table
from ingest.core.errors import EXIT_OK
from ingest.core.ids import TableRef
from ingest.core.target import parse_target
from ingest.load.runner import prepare_sink, run_ingest, summary_line
from ingest.stages.synth import SynthSpec, write_shard


def brute_force_sql(ref: TableRef, row_id: int, limit: int) -> str:
    """The tutorial's search, with the query vector taken from a row of the table itself."""
    return (
        f"WITH (SELECT image_embedding FROM {ref.sql} WHERE id = {int(row_id)}) AS q "
        f"SELECT id, cosineDistance(image_embedding, q) AS distance, url, caption "
        f"FROM {ref.sql} ORDER BY distance ASC, id ASC LIMIT {int(limit)}"
    )


async def run_demo(workdir: Path, target: str, table: str, shards: int, rows: int) -> int:
    console = Console()
    spec = parse_target(target)
    t0 = time.monotonic()
    for shard in range(shards):
        write_shard(workdir, shard, SynthSpec(rows=rows, seed=42))
    console.print(f"synthesised {shards} shards × {rows:,} rows in LAION's layout ({time.monotonic() - t0:.1f} s)")
    ref = resolve_table(spec, None, table)
    settings = RunConfig(
        shards=tuple(range(shards)),
        table=ref,
        target=TargetConfig(spec, ref.database),
        source=SourceConfig(root=str(workdir)),
        state_path=workdir / "ledger.json",
        progress=False,
    )
    result = await run_ingest(settings)
    typer.echo(summary_line(result))
    sink = await prepare_sink(settings)
    try:
        total = (await sink.query(count_sql(settings.table)))[0]["n"]
        console.print(f"table {settings.table.key} in {spec.display()} holds {int(total):,} rows")
        probe = 1 * 10_000_000 + rows // 2 if shards > 1 else rows // 2
        t1 = time.monotonic()
        hits = await sink.query(brute_force_sql(settings.table, probe, 5))
        elapsed = time.monotonic() - t1
    finally:
        await sink.close()
    view = Table(title=f"nearest to row {probe}'s own image vector (brute force, {elapsed * 1000:.0f} ms)")
    for col in ("rank", "id", "distance", "caption"):
        view.add_column(col)
    for rank, hit in enumerate(hits, 1):
        view.add_row(str(rank), str(hit["id"]), f"{float(hit['distance']):.4f}", str(hit["caption"])[:60])
    console.print(view)
    return EXIT_OK
