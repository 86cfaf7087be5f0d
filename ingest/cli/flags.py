"""Flags that several commands share, declared once, and the one place flags become config objects.

A flags class is both the declaration (each field an annotated typer option with its default) and the value a
command receives: `with_flags(QueryFlags)` adds its fields to a command's own parameters, so typer sees one flat
list and the command one object. `QueryFlags` (a table on a target) serve index, search and eval; `LoadFlags`
(those and every loading knob) serve run and daemon. tests/test_daemon.py checks run and daemon offer the same.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from ingest.cli.options import (
    BatchRowsOpt,
    CacheDirOpt,
    CompressOpt,
    DimOpt,
    DownloadConcurrencyOpt,
    DrainSecondsOpt,
    EndpointUrlOpt,
    ExtraColumnsOpt,
    FormatOpt,
    InsertConcurrencyOpt,
    InsertModeOpt,
    KeepDownloadsOpt,
    LayoutOpt,
    LogFormatOpt,
    MaxRetriesOpt,
    MergesOpt,
    OnNanOpt,
    QueueDepthOpt,
    ReadTimeoutOpt,
    RetryMaxSecondsOpt,
    SegmentBytesOpt,
    SegmentRowsOpt,
    SourceOpt,
    StateOpt,
    VectorCodecOpt,
    ZookeeperPathOpt,
)
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
)
from ingest.core.config import (
    DEFAULT_ZOOKEEPER_PATH,
    LAION_ROOT,
    READ_TIMEOUT,
    LoadConfig,
    MergePolicy,
    NodeEndpoint,
    QueryConfig,
    RunConfig,
    SourceConfig,
    TargetConfig,
    parse_node,
    read_credentials,
    resolve_table,
    validate_zookeeper_path,
)
from ingest.core.errors import ConfigError
from ingest.core.layout import parse_layout
from ingest.core.plan import BLOCK_ROWS, SEGMENT_BYTES, SEGMENT_ROWS
from ingest.core.retry import RetryPolicy
from ingest.core.schema import parse_extra_columns
from ingest.core.target import DEFAULT_TARGET, parse_target

R = TypeVar("R")
F = TypeVar("F")

DEFAULT_CACHE_DIR = Path("./laion-cache")


@dataclass(frozen=True)
class QueryFlags:
    """A table on a target, and how to reach it: what every command that talks to ClickHouse takes."""

    target: TargetOpt = DEFAULT_TARGET
    table: TableOpt = "laion"
    database: DatabaseOpt = None
    user: UserOpt = None
    password_file: PasswordFileOpt = None
    ca_file: CaFileOpt = None
    insecure: InsecureOpt = False
    cluster: ClusterOpt = None
    node: NodeOpt = None


@dataclass(frozen=True)
class LoadFlags(QueryFlags):
    """Every loading flag of `run` and `daemon`, as typed on the command line."""

    source: SourceOpt = LAION_ROOT
    batch_rows: BatchRowsOpt = BLOCK_ROWS
    segment_rows: SegmentRowsOpt = SEGMENT_ROWS
    segment_bytes: SegmentBytesOpt = SEGMENT_BYTES
    queue_depth: QueueDepthOpt = 2
    download_concurrency: DownloadConcurrencyOpt = 2
    insert_concurrency: InsertConcurrencyOpt = 2
    dim: DimOpt = None
    layout: LayoutOpt = "laion400m"
    extra_columns: ExtraColumnsOpt = None
    vector_codec: VectorCodecOpt = None
    endpoint_url: EndpointUrlOpt = None
    cache_dir: CacheDirOpt = DEFAULT_CACHE_DIR
    keep_downloads: KeepDownloadsOpt = False
    insert_format: FormatOpt = "native"
    compress: CompressOpt = "auto"
    merges: MergesOpt = "auto"
    state: StateOpt = None
    on_nan: OnNanOpt = "fail-shard"
    max_retries: MaxRetriesOpt = 8
    retry_max_seconds: RetryMaxSecondsOpt = 30.0
    drain_seconds: DrainSecondsOpt = 25.0
    read_timeout: ReadTimeoutOpt = READ_TIMEOUT
    log_format: LogFormatOpt = "text"
    insert_mode: InsertModeOpt = "distributed"
    zookeeper_path: ZookeeperPathOpt = DEFAULT_ZOOKEEPER_PATH


def with_flags(flags_type: type[F]) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Give `command(..., flags: flags_type)` the fields of `flags_type` as typer options after its own parameters."""
    hints = get_type_hints(flags_type, include_extras=True)
    shared = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
        for f in fields(flags_type)  # type: ignore[arg-type]
    ]
    names = [p.name for p in shared]

    def decorate(command: Callable[..., R]) -> Callable[..., R]:
        own = inspect.signature(command, eval_str=True)
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own.parameters.values() if p.name != "flags"]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> R:
            flags = flags_type(**{name: kwargs.pop(name) for name in names})
            return command(flags=flags, **kwargs)

        signature = own.replace(parameters=[*params, *shared])
        wrapper.__signature__ = signature  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        return wrapper

    return decorate


with_load_flags = with_flags(LoadFlags)
with_query_flags = with_flags(QueryFlags)


def merge_policy(flag: str, steady: bool, cluster: str | None = None) -> MergePolicy:
    """`--merges` → policy. `auto` defers during a `run` into the embedded target or one server: the server
    then spends its CPU on the load, not on merging parts the load is still adding (on 26.9, 11.7–15.0 server
    CPU-seconds for a 1M-row shard against 19.0–20.7 with merges, bench/server26.py), and merges once at the end,
    as after one big INSERT. A stop outlives a killed run on a server until the next run, daemon or `index` on
    the table resumes it, or the server restarts (ingest/sinks/merge_hold.py). The daemon merges during its loads
    (a steady state, not a bulk load). Not on a cluster: the stop would be per node's local table, which the
    Distributed insert does not own."""
    if flag == "deferred" and cluster is not None:
        raise ConfigError("--merges deferred is for one server or the embedded target, not a --cluster")
    if flag == "auto":
        return "during" if steady or cluster is not None else "deferred"
    return "deferred" if flag == "deferred" else "during"


def node_endpoints(cluster: str | None, nodes: list[str] | None) -> tuple[NodeEndpoint, ...]:
    """`--node` flags → endpoints; they only mean something with --cluster."""
    if nodes and cluster is None:
        raise ConfigError("--node names a member of a cluster: give --cluster NAME with it")
    return tuple(parse_node(n) for n in nodes or ())


def query_config(flags: QueryFlags) -> QueryConfig:
    """The table and target of a command that only queries (index, search, eval)."""
    f = flags
    spec = parse_target(f.target)
    ref = resolve_table(spec, f.database, f.table)
    creds = read_credentials(f.user, f.password_file)
    target = TargetConfig(
        spec, ref.database, creds, f.ca_file, f.insecure, cluster=f.cluster, nodes=node_endpoints(f.cluster, f.node)
    )
    return QueryConfig(target, ref)


def run_config(
    flags: LoadFlags,
    *,
    shards: tuple[int, ...],
    progress: bool,
    report: Path | None = None,
    finalize: bool = False,
    drain_seconds: float | None = None,
    steady: bool = False,
) -> RunConfig:
    """The one place flags become config objects, shared by `run` and `daemon`."""
    f = flags
    spec = parse_target(f.target)
    ref = resolve_table(spec, f.database, f.table)
    retry = RetryPolicy(max_retries=f.max_retries, max_seconds=f.retry_max_seconds)
    return RunConfig(
        shards=shards,
        table=ref,
        target=TargetConfig(
            spec=spec,
            database=ref.database,
            credentials=read_credentials(f.user, f.password_file),
            ca_file=f.ca_file,
            insecure=f.insecure,
            insert_format=f.insert_format,
            cluster=f.cluster,
            insert_mode=f.insert_mode,
            connections=f.insert_concurrency,
            compress=f.compress,
            nodes=node_endpoints(f.cluster, f.node),
            zookeeper_path=validate_zookeeper_path(f.zookeeper_path),
            merges=merge_policy(f.merges, steady, f.cluster),
            read_timeout=f.read_timeout,
        ),
        source=SourceConfig(
            root=f.source,
            cache_dir=f.cache_dir,
            keep_downloads=f.keep_downloads,
            download_concurrency=f.download_concurrency,
            retry=retry,
            layout=parse_layout(f.layout),
            endpoint_url=f.endpoint_url,
        ),
        load=LoadConfig(
            dim=f.dim,
            extra_columns=parse_extra_columns(f.extra_columns),
            vector_codec=f.vector_codec,
            batch_rows=f.batch_rows,
            segment_rows=f.segment_rows,
            segment_bytes=f.segment_bytes,
            queue_depth=f.queue_depth,
            insert_concurrency=f.insert_concurrency,
            on_nan=f.on_nan,
            retry=retry,
            drain_seconds=f.drain_seconds if drain_seconds is None else drain_seconds,
        ),
        state_path=f.state,
        report_path=report,
        progress=progress,
        finalize=finalize,
    )
