"""`laion-ingest index`: the flags, and a live bar of rows indexed while HNSW graphs are built."""

from __future__ import annotations

import sys
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ingest.cli.support import (
    CaFileOpt,
    ClusterOpt,
    DatabaseOpt,
    InsecureOpt,
    NodeOpt,
    PasswordFileOpt,
    TableOpt,
    TargetOpt,
    UserOpt,
    query_config,
    run_async,
    setup_logging,
)
from ingest.clickhouse.vector_sql import DEFAULT_EF_CONSTRUCTION, DEFAULT_M
from ingest.core.target import DEFAULT_TARGET
from ingest.vector.index import BuildDisplay, DisplayFactory, LogBuildDisplay, build_indexes, requests_for


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


def index_command(
    target: TargetOpt = DEFAULT_TARGET,
    table: TableOpt = "laion",
    database: DatabaseOpt = None,
    column: Annotated[
        Literal["image_embedding", "text_embedding", "all"],
        typer.Option("--column", help="Embedding column to index, or all (both)"),
    ] = "image_embedding",
    name: Annotated[str | None, typer.Option("--name", help="Index name (default image_index / text_index)")] = None,
    metric: Annotated[
        Literal["cosineDistance", "L2Distance"], typer.Option("--metric", help="Distance the index serves")
    ] = "cosineDistance",
    quantization: Annotated[
        Literal["bf16", "f16", "f32", "i8", "b1"],
        typer.Option("--quantization", help="Storage of vectors in the index"),
    ] = "bf16",
    m: Annotated[int, typer.Option("--m", min=2, help="HNSW connections per node")] = DEFAULT_M,
    ef_construction: Annotated[
        int, typer.Option("--ef-construction", min=1, help="HNSW candidate list while building")
    ] = DEFAULT_EF_CONSTRUCTION,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress on a terminal")] = True,
    user: UserOpt = None,
    password_file: PasswordFileOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    cluster: ClusterOpt = None,
    node: NodeOpt = None,
) -> None:
    """Add and materialize HNSW vector_similarity indexes (idempotent; dimension read from the data)."""
    setup_logging()
    q = query_config(target, table, database, user, password_file, ca_file, insecure, cluster, node)
    requests = requests_for(column, name, metric, quantization, m, ef_construction)
    run_async(build_indexes(q, requests, display_factory(progress), typer.echo))
