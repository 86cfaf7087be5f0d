"""`laion-ingest`: the typer app. Commands are thin: parse flags into config objects, call a stage, map errors."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import typer

from ingest.cli.flags import LoadFlags, run_config, with_load_flags
from ingest.cli.options import (
    LayoutOpt,
)
from ingest.cli.progress import make_reporter
from ingest.cli.support import (
    TableOpt,
    TargetOpt,
    cli_errors,
    install_stop_signals,
    run_async,
    set_debug,
    setup_logging,
)
from ingest.core.errors import EXIT_BAD_SHARDS, EXIT_OK, UsageError
from ingest.core.layout import parse_layout
from ingest.core.memory import use_one_malloc_arena
from ingest.core.plan import parse_shard_spec, worker_slice
from ingest.core.target import DEFAULT_TARGET
from ingest.load.runner import run_ingest, summary_line
from ingest.stages.synth import SynthSpec, write_shard

app = typer.Typer(
    name="laion-ingest",
    help="Stream LAION-layout CLIP embeddings into ClickHouse — fast, exact, resumable — and search them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks on errors")] = False,
) -> None:
    set_debug(debug)


def worker_index_default() -> int | None:
    raw = os.environ.get("JOB_COMPLETION_INDEX")
    return int(raw) if raw and raw.isdigit() else None


@app.command("run")
@cli_errors
@with_load_flags
def run(
    shards: Annotated[str, typer.Option("--shards", help="Shard spec, e.g. 0-2,5,7-9")] = "0-409",
    report: Annotated[Path | None, typer.Option("--report", help="Write a JSON report of quarantined shards")] = None,
    worker_index: Annotated[
        int | None, typer.Option("--worker-index", help="This worker's index (env JOB_COMPLETION_INDEX)")
    ] = None,
    worker_count: Annotated[
        int, typer.Option("--worker-count", min=1, help="Number of workers sharing the shards")
    ] = 1,
    finalize: Annotated[
        bool, typer.Option("--index/--no-index", "--finalize", help="Build vector indexes after the load")
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Live progress on a terminal")] = True,
    interrupt_exit_code: Annotated[
        int,
        typer.Option(
            "--interrupt-exit-code",
            min=0,
            max=255,
            help="Exit code after an ordered stop (SIGTERM/SIGINT) that left shards unfinished; a Kubernetes Job "
            "sets 4 so an evicted worker is retried instead of counted as done",
        ),
    ] = 0,
    *,
    flags: LoadFlags,
) -> None:
    """Load shards from SOURCE into TARGET (creates the table; resumes where a previous run stopped)."""
    setup_logging(flags.log_format)
    index = worker_index if worker_index is not None else worker_index_default()
    shard_list = parse_shard_spec(shards)
    if worker_count > 1 or index is not None:
        shard_list = worker_slice(shard_list, index or 0, worker_count)
    settings = run_config(flags, shards=tuple(shard_list), progress=progress, report=report, finalize=finalize)

    async def main() -> int:
        stop = asyncio.Event()
        install_stop_signals(stop)
        result = await run_ingest(settings, stop, make_reporter(settings.progress, len(settings.shards)))
        typer.echo(summary_line(result))
        if settings.finalize and not result.interrupted:
            from ingest.cli.index_command import builder, display_factory, render_grid
            from ingest.vector.autoindex import finalize_after_load

            display = display_factory(settings.progress)
            await finalize_after_load(settings.query, display, typer.echo, render_grid, builder(settings.query))
        unfinished = len(settings.shards) - len(result.shards_done) - len(result.shards_bad)
        if result.interrupted and unfinished > 0:
            return interrupt_exit_code
        return EXIT_BAD_SHARDS if result.shards_bad else EXIT_OK

    code = run_async(main())
    raise typer.Exit(code)


@app.command("synth")
@cli_errors
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write LAION-layout shards into")],
    shards: Annotated[str, typer.Option("--shards", help="Shard spec, e.g. 0-2")] = "0-2",
    rows: Annotated[int, typer.Option("--rows", min=0, help="Rows per shard")] = 5000,
    dim: Annotated[int, typer.Option("--dim", min=1)] = 512,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    dtype: Annotated[Literal["float16", "float32"], typer.Option("--dtype")] = "float16",
    layout: LayoutOpt = "laion400m",
    shape: Annotated[
        Literal["clustered", "noisy", "offset"],
        typer.Option("--shape", help="clustered; noisy (noise outweighs clusters); offset (a common direction)"),
    ] = "clustered",
) -> None:
    """Write synthetic shards in a LAION layout (unit vectors of a --shape, all 15 metadata columns)."""
    shard_list = parse_shard_spec(shards)
    spec = SynthSpec(rows=rows, dim=dim, seed=seed, dtype=dtype, shape=shape)
    files_layout = parse_layout(layout)
    for shard in shard_list:
        write_shard(out, shard, spec, files_layout)
    typer.echo(f"wrote {len(shard_list)} shard(s) × {rows} rows to {out}")


@app.command("demo")
@cli_errors
def demo(
    target: TargetOpt = DEFAULT_TARGET,
    table: TableOpt = "laion_demo",
    shards: Annotated[int, typer.Option("--shards", min=1)] = 3,
    rows: Annotated[int, typer.Option("--rows", min=1)] = 5000,
) -> None:
    """Offline tour: synthesise shards, ingest them into TARGET, run a brute-force similarity search."""
    from ingest.cli import demo as demo_mod  # rich's tables: not imported by the commands that load

    setup_logging()
    with tempfile.TemporaryDirectory(prefix="laion-demo-") as tmp:
        code = run_async(demo_mod.run_demo(Path(tmp), target, table, shards, rows))
    raise typer.Exit(code)


LATER_COMMANDS = ("index", "search", "eval", "plan", "daemon", "serve")
"""Registered only when the command line may name one (their modules import the vector, serve and daemon layers,
~0.2 s that a `run`, every shard worker's start, would otherwise spend before its first row)."""


def register_later_commands() -> None:
    """Add index, search, eval, plan, daemon and serve to `app` (idempotent)."""
    if any(c.name == "index" for c in app.registered_commands):
        return
    from ingest.cli.daemon_command import daemon_command
    from ingest.cli.index_command import index_command
    from ingest.cli.plan_command import plan_command
    from ingest.cli.search_command import eval_command, search_command
    from ingest.cli.serve_command import serve_command

    app.command("index")(cli_errors(index_command))
    app.command("search")(cli_errors(search_command))
    app.command("eval")(cli_errors(eval_command))
    app.command("plan")(cli_errors(plan_command))
    app.command("daemon")(cli_errors(daemon_command))
    app.command("serve")(cli_errors(serve_command))


@app.command("encode-text")
@cli_errors
def encode_text(
    weights: Annotated[str | None, typer.Option("--weights", help="CLIP ViT-B/32 weights file, or 'random'")] = None,
    batch_lines: Annotated[
        int, typer.Option("--batch-lines", min=1, help="Encode up to N already-waiting lines per forward pass")
    ] = 1,
) -> None:
    """ClickHouse executable UDF: one text per stdin line → one Array(Float32) literal per line."""
    from ingest.udf.program import run_encode_text

    raise typer.Exit(run_encode_text(_weights(weights), batch_lines))


@app.command("encode-image")
@cli_errors
def encode_image(
    weights: Annotated[str | None, typer.Option("--weights", help="CLIP ViT-B/32 weights file, or 'random'")] = None,
) -> None:
    """ClickHouse executable UDF: one image path per stdin line → one Array(Float32) literal per line."""
    from ingest.udf.program import run_encode_image

    raise typer.Exit(run_encode_image(_weights(weights)))


def _weights(flag: str | None) -> str:
    value = flag or os.environ.get("LAION_INGEST_CLIP_WEIGHTS")
    if not value:
        raise UsageError("no weights: pass --weights PATH (CLIP ViT-B/32) or --weights random")
    return value


def needs_later_commands(argv: list[str]) -> bool:
    """False when the first word is an early command (run, synth, demo, encode-*): nothing else can run."""
    words = [a for a in argv[1:] if not a.startswith("-")]
    early = {c.name for c in app.registered_commands} - set(LATER_COMMANDS)
    return not words or words[0] not in early


def main() -> None:
    if needs_later_commands(sys.argv):
        register_later_commands()
    use_one_malloc_arena()
    gc.freeze()  # the ~10^5 objects of the imports: a full collection no longer walks them (3.5% of a load's CPU)
    app()


__all__ = ["app", "main", "tempfile"]
