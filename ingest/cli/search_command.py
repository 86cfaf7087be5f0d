"""`laion-ingest search` and `eval`: flags, and the table or JSON a person or a script reads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ingest.cli.flags import QueryFlags, query_config, with_query_flags
from ingest.cli.support import (
    run_async,
    setup_logging,
)
from ingest.clickhouse.vector_sql import EF_SEARCH_SETTING
from ingest.vector.clip_client import WEIGHTS_ENV
from ingest.vector.eval import EvalResult, Route, run_eval
from ingest.vector.search import Column, Query, SearchResult, run_search


def render(result: SearchResult, console: Console) -> None:
    view = Table(title=f"nearest rows by {result.metric}({result.column}, query)")
    view.add_column("rank", justify="right")
    view.add_column("id", justify="right")
    view.add_column("distance", justify="right")
    view.add_column("url", overflow="fold")
    view.add_column("caption", overflow="fold")
    for hit in result.hits:
        view.add_row(str(hit["rank"]), str(hit["id"]), f"{hit['distance']:.6f}", hit["url"], hit["caption"])
    console.print(view)
    how = f"vector index {result.index} used" if result.index_used else "brute force (no vector index used)"
    console.print(f"{len(result.hits)} rows in {result.elapsed * 1000:.1f} ms; {how}", highlight=False)
    for shard in result.shards:  # a cluster: which shards used their index, and how the query was routed
        used = f"index {shard['index']} used" if shard["index_used"] else "no index used"
        console.print(f"shard {shard['shard']}: {used} (queried via {shard['route']})", highlight=False)


@with_query_flags
def search_command(
    text: Annotated[str | None, typer.Option("--text", help="Find images/captions like this text (CLIP)")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Find rows like this image file (CLIP)")] = None,
    like_id: Annotated[int | None, typer.Option("--like-id", help="Find rows like this row (its own vector)")] = None,
    vector: Annotated[str | None, typer.Option("--vector", help="Query vector as a JSON list")] = None,
    column: Annotated[Column, typer.Option("--column", help="Embedding column to search")] = "image_embedding",
    limit: Annotated[int, typer.Option("--limit", min=1, help="Rows to return (index serves up to 1000)")] = 10,
    brute_force: Annotated[bool, typer.Option("--brute-force", help="Exact search: skip the vector index")] = False,
    ef_search: Annotated[
        int | None, typer.Option("--ef-search", min=1, help=f"HNSW candidate list at query time ({EF_SEARCH_SETTING})")
    ] = None,
    weights: Annotated[
        str | None, typer.Option("--weights", help=f"CLIP weights for --text/--image (env {WEIGHTS_ENV})")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout, for scripts")] = False,
    *,
    flags: QueryFlags,
) -> None:
    """Nearest rows to a text, an image, a row (--like-id) or a vector: rank, id, distance, url, caption."""
    setup_logging()
    q = query_config(flags)
    query = Query(text=text, image=image, like_id=like_id, vector=vector)
    query.kind()
    result = run_async(run_search(q, query, column, limit, brute_force, ef_search, weights))
    if as_json:
        typer.echo(result.to_json().decode())
    else:
        render(result, Console())


def render_sweep(result: EvalResult, console: Console) -> None:
    view = Table(title=f"{result.index}: {result.queries} queries, brute force p50 {result.brute_force_p50_ms:.1f} ms")
    view.add_column(EF_SEARCH_SETTING, justify="right")
    for k in result.ks:
        view.add_column(f"recall@{k}", justify="right")
    for name in ("p50 ms", "p95 ms", "p99 ms", "QPS c=1", f"QPS c={result.concurrency}"):
        view.add_column(name, justify="right")
    for p in result.points:
        view.add_row(
            str(p.search_list),
            *(f"{p.recall[k]:.3f}" for k in result.ks),
            f"{p.p50_ms:.1f}",
            f"{p.p95_ms:.1f}",
            f"{p.p99_ms:.1f}",
            f"{p.qps_1:.0f}",
            f"{p.qps_n:.0f}",
        )
    console.print(view)


@with_query_flags
def eval_command(
    column: Annotated[Column, typer.Option("--column", help="Indexed embedding column")] = "image_embedding",
    queries: Annotated[int, typer.Option("--queries", min=1, help="Query vectors sampled from the table")] = 100,
    k: Annotated[
        list[int] | None,
        typer.Option("--k", min=1, max=1000, help="Neighbours compared per query (repeat: --k 10 --k 100)"),
    ] = None,
    ef_search: Annotated[
        list[int] | None,
        typer.Option(
            "--ef-search",
            min=1,
            help=f"{EF_SEARCH_SETTING} to sweep (repeat it); default: the one recorded when the index was tuned",
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Requests in flight for QPS at N")] = 4,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Which rows are sampled (same seed, same rows)")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout, for scripts")] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write recall vs latency to this PNG (the plot extra)")
    ] = None,
    route: Annotated[
        Route,
        typer.Option(
            "--route",
            help="With --cluster: auto (through Distributed when every shard's plan uses its index, else fan-out "
            "to the shards' local tables and merge), or force one to compare",
        ),
    ] = "auto",
    *,
    flags: QueryFlags,
) -> None:
    """Recall@k of the vector index against brute force, latency p50/p95/p99 and QPS, over search list sizes."""
    setup_logging()
    q = query_config(flags)
    ks = tuple(k or [10])
    result = run_async(run_eval(q, column, queries, ks, tuple(ef_search or ()), seed, concurrency, route))
    if plot is not None:
        from ingest.vector.eval_plot import plot_recall_latency

        plot_recall_latency(result, plot)
    if as_json:
        typer.echo(result.to_json().decode())
        return
    for line in result.lines():
        typer.echo(line)
    if len(result.points) > 1 or len(result.ks) > 1:
        render_sweep(result, Console(width=160))
    if plot is not None:
        typer.echo(f"plot: {plot}")
