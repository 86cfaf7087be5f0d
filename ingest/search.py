"""`laion-ingest search` (nearest rows to a text, image, row or vector) and `eval` (index recall).

Text and image queries go through the CLIP encoder programs (`ingest.udf.program`) as a subprocess, with the
same contract ClickHouse's executable UDFs use: one TSV-escaped value per stdin line, one `[f1,...]` line back.
Whether the vector index answered is read from `EXPLAIN indexes = 1` of the very same query and settings.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import orjson
import typer
from rich.console import Console
from rich.table import Table

from ingest.cli_support import (
    CaFileOpt,
    DatabaseOpt,
    InsecureOpt,
    PasswordFileOpt,
    TableOpt,
    TargetOpt,
    UserOpt,
    query_settings,
    run_async,
    setup_logging,
)
from ingest.errors import IngestError, UnsupportedFeatureError, UsageError
from ingest.finalize import connected_sink, require_table, require_vector_index, vector_indexes
from ingest.settings import Settings
from ingest.sinks.base import Sink
from ingest.sql import TableRef
from ingest.target import DEFAULT_TARGET
from ingest.vector_sql import (
    DEFAULT_METRIC,
    EF_SEARCH_SETTING,
    ExistingIndex,
    column_dim_sql,
    current_setting_sql,
    explain_sql,
    explain_used_index,
    median_ms,
    parse_vector_json,
    recall_at_k,
    row_vector_sql,
    sample_queries_sql,
    search_settings,
    search_sql,
    tsv_escape,
    vector_literal,
)

WEIGHTS_ENV = "LAION_INGEST_CLIP_WEIGHTS"
ENCODER_TIMEOUT_SECONDS = 600.0
CLIP_EXTRA_HINT = "install the clip extra: pip install .[clip]"

Column = Literal["image_embedding", "text_embedding"]


# ---- query vectors -----------------------------------------------------------------------------------------


def torch_installed() -> bool:
    """Look for torch without importing it (seconds of startup we would not use)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def encoder_argv(kind: Literal["text", "image"], weights: str) -> list[str]:
    return [sys.executable, "-m", "ingest.udf.program", kind, "--weights", weights]


async def encode(kind: Literal["text", "image"], value: str, weights: str | None) -> list[float]:
    """One value through the CLIP encoder program → its vector."""
    if not torch_installed():
        raise UsageError(f"--{kind} needs the CLIP encoder, and torch is not installed: {CLIP_EXTRA_HINT}")
    chosen = weights or os.environ.get(WEIGHTS_ENV, "")
    if not chosen:
        raise UsageError(
            f"--{kind} needs CLIP weights: pass --weights PATH (or --weights random), or set {WEIGHTS_ENV}"
        )
    if kind == "image":
        path = Path(value)
        if not path.is_file():
            raise UsageError(f"--image {value}: no such file")
        value = str(path.resolve())
    try:
        proc = await asyncio.create_subprocess_exec(
            *encoder_argv(kind, chosen),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise IngestError(f"cannot start the {kind} encoder: {exc.strerror}") from exc
    try:
        out, err = await asyncio.wait_for(
            proc.communicate((tsv_escape(value) + "\n").encode()), ENCODER_TIMEOUT_SECONDS
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise IngestError(f"the {kind} encoder did not answer within {ENCODER_TIMEOUT_SECONDS:.0f} s") from None
    problem = last_line(err)
    if proc.returncode != 0:
        raise IngestError(f"the {kind} encoder failed (exit {proc.returncode}): {problem or 'no message'}")
    vector = parse_encoder_output(out, kind)
    if not any(vector):
        raise UsageError(f"the {kind} encoder could not use {value!r}: {problem or 'it answered a zero vector'}")
    return vector


def last_line(data: bytes) -> str:
    lines = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def parse_encoder_output(out: bytes, kind: str) -> list[float]:
    first = out.split(b"\n", 1)[0].strip()
    try:
        doc = orjson.loads(first)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, list) or not doc or not all(isinstance(x, int | float) for x in doc):
        raise IngestError(f"the {kind} encoder answered {first[:60]!r}, not a vector")
    return [float(x) for x in doc]


async def row_vector(sink: Sink, ref: TableRef, column: str, row_id: int) -> list[float]:
    rows = await sink.query(row_vector_sql(ref, column, row_id))
    if not rows:
        raise UsageError(f"--like-id {row_id}: no such row in {ref.key}")
    return [float(x) for x in rows[0]["v"]]


async def column_dim(sink: Sink, ref: TableRef, column: str) -> int:
    rows = await sink.query(column_dim_sql(ref, column))
    if not rows:
        raise UsageError(f"table {ref.key} is empty: nothing to search")
    return int(rows[0]["d"])


# ---- search ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    """Exactly one of the four ways to say what to look for."""

    text: str | None = None
    image: str | None = None
    like_id: int | None = None
    vector: str | None = None

    def kind(self) -> str:
        given = [k for k in ("text", "image", "like_id", "vector") if getattr(self, k) is not None]
        if len(given) != 1:
            raise UsageError("give exactly one of --text, --image, --like-id, --vector")
        return given[0]


@dataclass
class SearchResult:
    hits: list[dict[str, Any]]
    elapsed: float
    index_used: bool
    index: str | None
    column: str
    metric: str
    settings: dict[str, str | int] = field(default_factory=dict)

    def to_json(self) -> bytes:
        doc = {
            "hits": self.hits,
            "elapsed": round(self.elapsed, 6),
            "index_used": self.index_used,
            "index": self.index,
            "column": self.column,
            "metric": self.metric,
            "settings": self.settings,
        }
        return orjson.dumps(doc)


def index_on(indexes: list[ExistingIndex], column: str) -> ExistingIndex | None:
    return next((ix for ix in indexes if ix.is_vector and ix.column == column), None)


def require_distance(sink: Sink, settings: Settings) -> None:
    info = sink.info
    if not info.cosine_distance:
        raise UnsupportedFeatureError(
            f"ClickHouse {info.version} at {settings.target.display()} has no cosineDistance: search needs "
            "ClickHouse >= 21.11 (>= 25.8 for the vector index), or the embedded chdb target"
        )


async def column_index(sink: Sink, ref: TableRef, column: str) -> ExistingIndex | None:
    """The vector index on `column`, on servers that have vector indexes at all."""
    if not sink.info.vector_index:
        return None
    return index_on(await vector_indexes(sink, ref), column)


async def timed_search(sink: Sink, sql: str, settings: dict[str, str | int]) -> tuple[list[dict[str, Any]], float]:
    start = time.perf_counter()
    rows = await sink.query(sql, settings)
    return rows, time.perf_counter() - start


async def index_used(sink: Sink, sql: str, settings: dict[str, str | int]) -> str | None:
    """The vector index the plan of this exact query reads, if any."""
    if not sink.info.vector_index:
        return None
    plan = await sink.query(explain_sql(sql), settings)
    return explain_used_index("\n".join(str(r.get("explain", "")) for r in plan))


async def run_search(
    settings: Settings,
    query: Query,
    column: str,
    limit: int,
    brute_force: bool,
    ef_search: int | None,
    weights: str | None,
) -> SearchResult:
    kind = query.kind()
    ref = settings.table
    async with connected_sink(settings) as sink:
        require_distance(sink, settings)
        if ef_search is not None:
            require_vector_index(sink, settings)
        await require_table(sink, ref, settings)
        dim = await column_dim(sink, ref, column)
        index = await column_index(sink, ref, column)
        metric = (index.metric if index else None) or DEFAULT_METRIC
        if kind == "like_id":
            assert query.like_id is not None
            vector = await row_vector(sink, ref, column, query.like_id)
        elif kind == "vector":
            assert query.vector is not None
            vector = parse_vector_json(query.vector)
        else:
            value = query.text if kind == "text" else query.image
            assert value is not None
            vector = await encode("text" if kind == "text" else "image", value, weights)
        if len(vector) != dim:
            raise UsageError(f"the query vector has {len(vector)} values; {column} in {ref.key} holds {dim}")
        sql = search_sql(ref, column, metric, vector_literal(vector), limit)
        opts = search_settings(brute_force, ef_search)
        rows, elapsed = await timed_search(sink, sql, opts)
        used = await index_used(sink, sql, opts)
    hits = [
        {
            "rank": rank,
            "id": int(r["id"]),
            "distance": float(r["distance"]),
            "url": str(r["url"]),
            "caption": str(r["caption"]),
        }
        for rank, r in enumerate(rows, 1)
    ]
    return SearchResult(hits, elapsed, used is not None, used, column, metric, opts)


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
) -> None:
    """Nearest rows to a text, an image, a row (--like-id) or a vector: rank, id, distance, url, caption."""
    setup_logging()
    settings = query_settings(target, table, database, user, password_file, ca_file, insecure)
    query = Query(text=text, image=image, like_id=like_id, vector=vector)
    query.kind()
    result = run_async(run_search(settings, query, column, limit, brute_force, ef_search, weights))
    if as_json:
        typer.echo(result.to_json().decode())
    else:
        render(result, Console())


# ---- recall evaluation -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvalResult:
    k: int
    queries: int
    recall: float
    index_ms: float
    brute_force_ms: float
    index: str
    ef_search: str
    index_used: bool

    def lines(self) -> list[str]:
        used = "" if self.index_used else " (warning: the plan did not use the index)"
        return [
            f"recall@{self.k}: {self.recall:.3f}",
            f"{self.queries} queries sampled from the table; index {self.index}{used}, "
            f"{EF_SEARCH_SETTING}={self.ef_search}",
            f"median latency: index {self.index_ms:.1f} ms, brute force {self.brute_force_ms:.1f} ms",
        ]

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                f"recall_at_{self.k}": self.recall,
                "k": self.k,
                "queries": self.queries,
                "index": self.index,
                "index_used": self.index_used,
                EF_SEARCH_SETTING: self.ef_search,
                "index_median_ms": self.index_ms,
                "brute_force_median_ms": self.brute_force_ms,
            }
        )


async def run_eval(
    settings: Settings, column: str, queries: int, k: int, ef_search: int | None, seed: int
) -> EvalResult:
    """Top-k through the index against brute force (use_skip_indexes = 0) for rows sampled from the table."""
    ref = settings.table
    async with connected_sink(settings) as sink:
        require_vector_index(sink, settings)
        await require_table(sink, ref, settings)
        index = await column_index(sink, ref, column)
        if index is None:
            raise UsageError(
                f"no vector index on {column} in {ref.key}: build one first with `laion-ingest index --column {column}`"
            )
        metric = index.metric or DEFAULT_METRIC
        samples = await sink.query(sample_queries_sql(ref, column, queries, seed))
        if not samples:
            raise UsageError(f"table {ref.key} is empty: nothing to evaluate")
        approx_opts = search_settings(False, ef_search)
        exact_opts = search_settings(True, None)
        recalls: list[float] = []
        approx_s: list[float] = []
        exact_s: list[float] = []
        used: str | None = None
        for i, row in enumerate(samples):
            sql = search_sql(ref, column, metric, vector_literal(np.asarray(row["v"], dtype=np.float32)), k)
            if i == 0:
                used = await index_used(sink, sql, approx_opts)
            approx, a_s = await timed_search(sink, sql, approx_opts)
            exact, e_s = await timed_search(sink, sql, exact_opts)
            recalls.append(recall_at_k([int(r["id"]) for r in approx], [int(r["id"]) for r in exact], k))
            approx_s.append(a_s)
            exact_s.append(e_s)
        effective = str(ef_search) if ef_search is not None else await _setting(sink, EF_SEARCH_SETTING)
    return EvalResult(
        k=k,
        queries=len(samples),
        recall=float(np.mean(recalls)),
        index_ms=median_ms(approx_s),
        brute_force_ms=median_ms(exact_s),
        index=index.name,
        ef_search=effective,
        index_used=used == index.name,
    )


async def _setting(sink: Sink, name: str) -> str:
    rows = await sink.query(current_setting_sql(name))
    return str(rows[0]["value"]) if rows else "?"


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
) -> None:
    """Recall@k of the vector index against brute force, and the median latency of both."""
    setup_logging()
    settings = query_settings(target, table, database, user, password_file, ca_file, insecure)
    result = run_async(run_eval(settings, column, queries, k, ef_search, seed))
    if as_json:
        typer.echo(result.to_json().decode())
    else:
        for line in result.lines():
            typer.echo(line)
