"""`laion-ingest plan`: a capacity plan for a table you do not have yet (vector/capacity.py does the arithmetic)."""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
import typer
from rich.console import Console
from rich.table import Table

from ingest.cli.flags import QueryFlags, query_config
from ingest.cli.support import DatabaseOpt, PasswordFileOpt, TableOpt, UserOpt, run_async
from ingest.clickhouse.index_sql import CACHE_SETTING
from ingest.core.errors import IndexTooLargeError
from ingest.vector.capacity import DEFAULTS, DEFAULTS_DIM, Ask, Constants, Plan, plan, scaled
from ingest.vector.growth import GRAPH_EXPONENT, GRAPH_EXPONENT_SOURCE
from ingest.vector.sizing import CACHE_RAM_RATIO, human_bytes, parse_bytes


async def _constants(flags: QueryFlags, column: str) -> tuple[Constants, int]:
    from ingest.vector.capacity_run import measured_on_table
    from ingest.vector.index import connected_sink

    q = query_config(flags)
    async with connected_sink(q) as sink:
        return await measured_on_table(sink, q.table, column, DEFAULTS)


def positive(value: float | None) -> float | None:
    """No build takes no time: a bound must be above 0."""
    if value is not None and value <= 0:
        raise typer.BadParameter(f"must be greater than 0, got {value:g}")
    return value


def render(p: Plan) -> None:
    a = p.ask
    console = Console(width=200)
    head = (
        f"{a.rows:,} rows × {a.dim}, up to {a.nodes} node(s) of {human_bytes(a.max_memory)} index memory, "
        f"recall@10 ≥ {a.recall_target:.2f}"
        + (f", build ≤ {a.max_build_hours:g} h" if a.max_build_hours is not None else "")
    )
    view = Table(title=head)
    for col in (
        "structure",
        "nodes",
        "index memory/node",
        "cache/node",
        "disk/node",
        "load h/worker",
        "load h",
        "build h",
        "recall@10",
        "latency ms",
        "fits",
    ):
        view.add_column(col, justify="left" if col == "structure" else "right", no_wrap=True)
    for o in sorted(p.options, key=lambda o: (o.nodes, o.memory_per_node_bytes, o.build_hours)):
        mark = "*" if o is p.choice else ""
        view.add_row(
            mark + o.structure.label(),
            str(o.nodes),
            human_bytes(o.memory_per_node_bytes),
            human_bytes(o.cache_per_node_bytes),
            human_bytes(o.disk_per_node_bytes),
            f"{o.load_hours_per_worker:.1f}",
            f"{o.load_hours:.1f}",
            f"{o.build_hours:.1f}",
            f"{o.recall_at_10:.3f}",
            f"{o.latency_ms:.1f}",
            ("yes" if o.fits else "no") + ("" if o.reaches else ", below target") + ("" if o.in_time else ", too slow"),
        )
    console.print(view)
    console.print(
        "projected (nothing here was built at this size) from: "
        + p.constants.source
        + (f"; load rate {p.constants.load_source}" if p.constants.load_source else "")
        + f"; build hours scaled by Σ G^(1+b) over each node's graphs, b = {GRAPH_EXPONENT:.2f} (per-row cost "
        f"∝ G^b; {GRAPH_EXPONENT_SOURCE}); index memory: what a loaded index holds in RAM (its uncompressed "
        "bytes, with a margin); cache: what ClickHouse's vector index cache counts for it (usearch's reserved "
        "arenas)",
        highlight=False,
        soft_wrap=True,
    )
    if p.choice is not None:
        o = p.choice
        console.print(
            f"plan: {o.nodes} node(s) × {human_bytes(o.memory_per_node_bytes)} index memory "
            f"({human_bytes(o.disk_per_node_bytes)} disk each), {o.structure.label()} at search list "
            f"{o.structure.search_list}: load {o.load_hours:.1f} h ({a.workers_per_node} worker(s) per node), build "
            f"{o.build_hours:.1f} h, recall@10 {o.recall_at_10:.3f}, ~{o.latency_ms:.0f} ms per search ({p.reason})",
            highlight=False,
            soft_wrap=True,
        )
        console.print(cache_advice(o.cache_per_node_bytes), highlight=False, soft_wrap=True)


def cache_advice(counted: int) -> str:
    """The server settings a node needs so its index stays in the vector index cache."""
    ram = counted / CACHE_RAM_RATIO
    return (
        f"each node's server config: {CACHE_SETTING} ≥ {human_bytes(counted)} (an index the cache cannot hold is read "
        f"from disk again on every search); ClickHouse caps every cache at cache_size_to_ram_max_ratio × RAM "
        f"({CACHE_RAM_RATIO:g} by default), so on nodes with less than {human_bytes(ram)} of RAM raise that ratio "
        "too (the count is reserved address space, not RAM the index touches)"
    )


def plan_command(
    rows: Annotated[int, typer.Option("--rows", min=1, help="Rows of the table to plan for (one embedding column)")],
    nodes: Annotated[int, typer.Option("--nodes", min=1, help="Most nodes (shards) available")] = 1,
    max_memory: Annotated[
        str | None, typer.Option("--max-memory", help="Index memory one node may spend, e.g. 64G")
    ] = None,
    dim: Annotated[
        int | None, typer.Option("--dim", min=1, help="Dimension (default: measured table's, else 512)")
    ] = None,
    recall_target: Annotated[float, typer.Option("--recall-target", min=0.0, max=1.0)] = 0.95,
    workers: Annotated[int, typer.Option("--workers-per-node", min=1, help="Loading workers per node")] = 1,
    cores: Annotated[int, typer.Option("--cores", min=1, help="Cores per node (the defaults were measured on 2)")] = 2,
    max_graphs: Annotated[
        int, typer.Option("--max-graphs", min=1, help="Most HNSW graphs a search visits per node")
    ] = 16,
    max_build_hours: Annotated[
        float | None,
        typer.Option("--max-build-hours", callback=positive, help="Longest index build to plan for, e.g. 48"),
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", "-t", help="Measure from this target's tuned table (else defaults)")
    ] = None,
    table: TableOpt = "laion",
    database: DatabaseOpt = None,
    column: Annotated[
        Literal["image_embedding", "text_embedding"], typer.Option("--column", help="Column whose tuning to use")
    ] = "image_embedding",
    user: UserOpt = None,
    password_file: PasswordFileOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable: choice and candidates")] = False,
) -> None:
    """Plan index memory, disk, load and build hours, recall and latency per structure × node count, for a table
    you do not have yet; names the cheapest plan that fits, or what hardware would."""
    if target is not None:
        flags = QueryFlags(target=target, table=table, database=database, user=user, password_file=password_file)
        constants, measured_dim = run_async(_constants(flags, column))
    else:
        constants, measured_dim = DEFAULTS, DEFAULTS_DIM
    want_dim = dim or measured_dim or DEFAULTS_DIM
    constants = scaled(constants, measured_dim or DEFAULTS_DIM, want_dim)
    ask = Ask(
        rows,
        want_dim,
        nodes,
        parse_bytes(max_memory) if max_memory else None,
        recall_target,
        workers,
        cores,
        max_graphs,
        max_build_hours=max_build_hours,
    )
    p = plan(ask, constants)
    if as_json:
        doc = {
            "choice": p.choice.as_json() if p.choice is not None else None,
            "reason": p.reason,
            "rows": rows,
            "dim": want_dim,
            "nodes": nodes,
            "max_memory_per_node_bytes": ask.max_memory,
            "max_build_hours": ask.max_build_hours,
            "recall_target": recall_target,
            "constants_source": constants.source,
            "projected": True,
            "graph_exponent": GRAPH_EXPONENT,
            "server_settings": ({CACHE_SETTING: p.choice.cache_per_node_bytes} if p.choice is not None else None),
            "candidates": [o.as_json() for o in p.options],
        }
        typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        render(p)
    if p.choice is None:
        raise IndexTooLargeError(p.reason)
