"""`laion-ingest index`: the flags, and a live bar of rows indexed while HNSW graphs are built."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from ingest.cli.flags import QueryFlags, query_config, with_query_flags
from ingest.cli.support import (
    run_async,
    setup_logging,
)
from ingest.clickhouse.vector_sql import DEFAULT_EF_CONSTRUCTION, DEFAULT_M, DEFAULT_QUANTIZATION
from ingest.core.config import QueryConfig, TuneConfig
from ingest.vector.autoindex import BuildFn, IndexJob, IndexView, build_tuned_indexes
from ingest.vector.index import BuildDisplay, DisplayFactory, LogBuildDisplay, requests_for
from ingest.vector.index_report import IndexRunLog
from ingest.vector.sizing import human_bytes, parse_bytes
from ingest.vector.tune import TuneReport


class RichBuildDisplay:
    """A live bar of rows indexed, fed from system.mutations / system.merges."""

    def __init__(self, name: str, total: int) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._task: TaskID = self._progress.add_task(f"building {name}", total=total)
        self._progress.start()

    def update(self, rows_done: int, rows_total: int) -> None:
        self._progress.update(self._task, completed=rows_done, total=rows_total)

    def close(self) -> None:
        self._progress.stop()


def make_display(enabled: bool, name: str, total: int) -> BuildDisplay:
    if enabled and sys.stderr.isatty():
        return RichBuildDisplay(name, total)
    return LogBuildDisplay(name)


def display_factory(enabled: bool) -> DisplayFactory:
    """A live bar on a terminal when progress is wanted, log lines otherwise."""

    def make(name: str, total: int) -> BuildDisplay:
        if enabled and sys.stderr.isatty():
            return RichBuildDisplay(name, total)
        return LogBuildDisplay(name)

    return make


def builder(q: QueryConfig) -> BuildFn:
    """How `index` builds on this target: per shard on a cluster (vector/cluster_index.py), else on the table."""
    if q.target.cluster is None:
        return build_tuned_indexes
    from ingest.vector.cluster_index import build_cluster_indexes  # (it needs aiohttp: only for clusters)

    return build_cluster_indexes


def render_grid(report: TuneReport) -> None:
    """The measured grid as a table, then the choice and its reason (stdout: it is the command's answer)."""
    console = Console(width=160)
    view = Table(title=f"{report.column}: candidates on {report.sample_rows:,} sampled rows")
    view.add_column("config", no_wrap=True)
    for size in report.search_lists:
        view.add_column(f"recall@10 L={size}", justify="right")
    view.add_column("build s", justify="right")
    view.add_column(f"projected s ({report.rows:,} rows)", justify="right")
    view.add_column("projected memory", justify="right")
    for row in report.rows_for_print():
        cells = [f"{row.recall[s]:.3f}" if s in row.recall else "-" for s in report.search_lists]
        view.add_row(
            row.label,
            *cells,
            f"{row.build_seconds:.1f}",
            f"{row.projected_seconds:.0f}",
            human_bytes(row.projected_bytes),
        )
    console.print(view)
    for line in (report.sample_line(), *report.notes, report.choice_line()):
        console.print(line, highlight=False, soft_wrap=True)


@with_query_flags
def index_command(
    column: Annotated[
        Literal["image_embedding", "text_embedding", "all"],
        typer.Option("--column", help="Embedding column to index, or all (both)"),
    ] = "image_embedding",
    name: Annotated[str | None, typer.Option("--name", help="Index name (default image_index / text_index)")] = None,
    metric: Annotated[
        Literal["cosineDistance", "L2Distance"], typer.Option("--metric", help="Distance the index serves")
    ] = "cosineDistance",
    quantization: Annotated[
        Literal["bf16", "f16", "f32", "i8", "b1"] | None,
        typer.Option(
            "--quantization", help="Storage of vectors in the index (default: tuned among bf16, i8, b1 with rescoring)"
        ),
    ] = None,
    m: Annotated[int | None, typer.Option("--m", min=2, help="HNSW connections per node (skips tuning)")] = None,
    ef_construction: Annotated[
        int | None, typer.Option("--ef-construction", min=1, help="HNSW candidate list while building (skips tuning)")
    ] = None,
    recall_target: Annotated[
        float, typer.Option("--recall-target", min=0.0, max=1.0, help="Recall@10 the tuned index must reach")
    ] = 0.95,
    sample_rows: Annotated[int, typer.Option("--sample-rows", min=100, help="Rows sampled for tuning")] = 20_000,
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Which rows the tuning samples (same seed, same rows)")
    ] = TuneConfig.seed,
    max_graphs: Annotated[
        int,
        typer.Option(
            "--max-graphs",
            min=1,
            help="Most HNSW graphs one search visits: graphs are made as small as this allows (they build "
            "faster and recall more), a table of more parts is merged first; 1 = one graph over the merged table",
        ),
    ] = TuneConfig.max_graphs,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Tune and size, print the choice, build nothing")] = False,
    max_memory: Annotated[
        str | None, typer.Option("--max-memory", help="Memory the index may take, e.g. 8G (default: the target's)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Build even when the projected memory does not fit")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress on a terminal")] = True,
    project_rows: Annotated[
        list[int] | None,
        typer.Option(
            "--project-rows",
            min=1,
            help="Also project build time and index memory at this many rows (repeatable), from the build "
            "measured here (built twice, the lesser kept) and the structure the tuner chooses on this table's rows "
            "in that table's graphs (with --dry-run: from the tuning sample)",
        ),
    ] = None,
    report_file: Annotated[
        Path | None,
        typer.Option("--report", help="Write seconds per phase, the structure and its memory as JSON to this file"),
    ] = None,
    *,
    flags: QueryFlags,
) -> None:
    """Add and materialize HNSW vector_similarity indexes, tuned to --recall-target unless --m/--ef-construction
    are given; sized before building (refused when it cannot fit), built once over merged parts."""
    setup_logging()
    q = query_config(flags)
    auto = m is None and ef_construction is None
    cfg = TuneConfig(
        recall_target=recall_target,
        sample_rows=sample_rows,
        seed=seed,
        max_graphs=max_graphs,
        quantizations=(quantization,) if quantization else TuneConfig.quantizations,
        max_memory=parse_bytes(max_memory) if max_memory else None,
        force=force,
        dry_run=dry_run,
        project_rows=tuple(project_rows or ()),
    )
    requests = requests_for(
        column,
        name,
        metric,
        quantization or DEFAULT_QUANTIZATION,
        m or DEFAULT_M,
        ef_construction or DEFAULT_EF_CONSTRUCTION,
    )
    run_log = IndexRunLog()
    try:
        view = IndexView(display_factory(progress), typer.echo, render_grid, run_log)
        run_async(builder(q)(q, IndexJob(requests, auto, cfg), view))
    finally:
        if report_file is not None:
            report_file.write_bytes(run_log.to_json())
