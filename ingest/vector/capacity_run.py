"""The I/O around the capacity plan (vector/capacity.py is pure): the tuner's measurements are kept in a small
table of ours (`_laion_ingest_tune_grid`, next to `_laion_ingest_index_meta`), and `plan --target` reads them
back with the table's bytes on disk per row, so a plan is projected from the user's own rows."""

from __future__ import annotations

from dataclasses import replace

from ingest.clickhouse.index_sql import (
    create_grid_sql,
    grid_ref,
    insert_grid_sql,
    row_bytes_sql,
    select_grid_sql,
    table_exists_in_sql,
)
from ingest.core.ids import TableRef
from ingest.sinks.base import Sink
from ingest.vector.capacity import Constants, Structure
from ingest.vector.tune import Candidate, TuneReport


async def record_grid(sink: Sink, ref: TableRef, report: TuneReport) -> None:
    """Every candidate the tuner measured, with the list it reached the target at (else its best)."""
    rows: list[tuple[str | int | float | None, ...]] = []
    for m in report.measured:
        size = m.first_list_reaching(report.target)
        if size is None:
            size, _ = max(m.recall.items(), key=lambda kv: (kv[1], -kv[0]), default=(0, 0.0))
        c = m.candidate
        graph = report.sample_graph_rows or report.sample_rows
        rows.append(
            (
                c.quantization,
                c.m,
                c.ef_construction,
                c.fetch_multiplier,
                float(m.build_seconds),
                report.sample_rows,
                graph,
                float(m.recall.get(size, 0.0)),
                size,
                float(m.latency_ms),
                report.rows,
                report.dim,
            )
        )
    if rows:
        await sink.execute(create_grid_sql(ref))
        await sink.execute(insert_grid_sql(ref, report.column, rows))


async def measured_on_table(sink: Sink, ref: TableRef, column: str, defaults: Constants) -> tuple[Constants, int]:
    """Constants from the latest tuning of this column (and the table's bytes on disk per row); the defaults
    where nothing was recorded. Returns them and the dimension they were measured at (0: not measured here)."""
    exists = await sink.query(table_exists_in_sql(grid_ref(ref)))
    got = await sink.query(select_grid_sql(ref, column)) if exists and int(exists[0]["n"]) else []
    if not got:
        return defaults, 0
    structures = tuple(
        Structure(
            Candidate(str(r["quantization"]), int(r["m"]), int(r["ef_construction"]), int(r["fetch_multiplier"])),
            float(r["recall"]),
            int(r["search_list"]),
            float(r["build_seconds"]),
            int(r["sample_rows"]),
            int(r["graph_rows"]),
            float(r["latency_ms"]),
        )
        for r in got
    )
    dim, rows = int(got[0]["dim"]), int(got[0]["table_rows"])
    parts = await sink.query(row_bytes_sql(ref))
    table_rows, table_bytes = (int(parts[0]["rows"] or 0), int(parts[0]["bytes"] or 0)) if parts else (0, 0)
    source = (
        f"measured on {ref.key}.{column} by `index` ({len(structures)} candidates on a {structures[0].sample_rows:,}"
        f"-row sample of {rows:,} rows)"
    )
    k = replace(defaults, structures=structures, source=source + "; load rate: " + defaults.load_source)
    if table_rows and table_bytes:
        # the row's other columns as measured here, the rest is its embeddings
        per_row = table_bytes / table_rows
        vectors = max(per_row - defaults.disk_bytes_other, 0.0)
        k = replace(k, disk_bytes_per_value=vectors / dim)
        k = replace(k, source=k.source + f"; disk {per_row:,.0f} bytes per row as stored in {ref.key}")
    return k, dim
