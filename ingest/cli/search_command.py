"""`laion-ingest search` and `eval`: flags, and the table or JSON a person or a script reads."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

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
from ingest.clickhouse.vector_sql import EF_SEARCH_SETTING
from ingest.core.target import DEFAULT_TARGET
from ingest.vector.clip_client import WEIGHTS_ENV
from ingest.vector.eval import run_eval
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


def search_command(
    target: TargetOpt = DEFAULT_TARGET,
    table: TableOpt = "laion",
    database: DatabaseOpt = None,
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
    user: UserOpt = None,
    password_file: PasswordFileOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    cluster: ClusterOpt = None,
    node: NodeOpt = None,
) -> None:
    """Nearest rows to a text, an image, a row (--like-id) or a vector: rank, id, distance, url, caption."""
    setup_logging()
    q = query_config(target, table, database, user, password_file, ca_file, insecure, cluster, node)
    query = Query(text=text, image=image, like_id=like_id, vector=vector)
    query.kind()
    result = run_async(run_search(q, query, column, limit, brute_force, ef_search, weights))
    if as_json:
        typer.echo(result.to_json().decode())
    else:
        render(result, Console())


def eval_command(
    target: TargetOpt = DEFAULT_TARGET,
    table: TableOpt = "laion",
    database: DatabaseOpt = None,
    column: Annotated[Column, typer.Option("--column", help="Indexed embedding column")] = "image_embedding",
    queries: Annotated[int, typer.Option("--queries", min=1, help="Query vectors sampled from the table")] = 100,
    k: Annotated[int, typer.Option("--k", min=1, max=1000, help="Neighbours compared per query")] = 10,
    ef_search: Annotated[
        int | None, typer.Option("--ef-search", min=1, help=f"HNSW candidate list at query time ({EF_SEARCH_SETTING})")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Which rows are sampled (same seed, same rows)")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout, for scripts")] = False,
    user: UserOpt = None,
    password_file: PasswordFileOpt = None,
    ca_file: CaFileOpt = None,
    insecure: InsecureOpt = False,
    cluster: ClusterOpt = None,
    node: NodeOpt = None,
) -> None:
    """Recall@k of the vector index against brute force, and the median latency of both."""
    setup_logging()
    q = query_config(target, table, database, user, password_file, ca_file, insecure, cluster, node)
    result = run_async(run_eval(q, column, queries, k, ef_search, seed))
    if as_json:
        typer.echo(result.to_json().decode())
    else:
        for line in result.lines():
            typer.echo(line)
