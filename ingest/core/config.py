"""Configuration objects, one per concern, each frozen and built once from flags and environment.

A component receives only the object of its concern: a sink gets a `TargetConfig`, a source a `SourceConfig`,
the pipeline a `LoadConfig`. `RunConfig` is what one `run` (or one daemon cycle) needs: the three together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ingest.core.errors import ConfigError
from ingest.core.ids import TableRef
from ingest.core.layout import LAION400M, Layout
from ingest.core.plan import BLOCK_ROWS, SEGMENT_BYTES, SEGMENT_ROWS
from ingest.core.retry import RetryPolicy
from ingest.core.schema import DEFAULT_SCHEMA, TableSchema, VectorCodec
from ingest.core.target import TargetSpec, parse_target

LAION_ROOT = "https://deploy.laion.ai/8f83b608504d46bb81708ec86e912220/embeddings/"

InsertFormat = Literal["native", "rowbinary"]
InsertMode = Literal["distributed", "local"]
NanPolicy = Literal["fail-shard", "skip-row"]
OBJECT_STORE_SCHEMES = ("s3://", "gs://", "gcs://", "hf://")
Compression = Literal["auto", "none", "zstd", "gzip"]
MergePolicy = Literal["during", "deferred"]


@dataclass(frozen=True)
class Credentials:
    """User and password for an HTTP target. The password never appears in repr, logs or errors."""

    user: str = "default"
    password: str = field(default="", repr=False)

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password={'***' if self.password else ''!r})"


@dataclass(frozen=True, slots=True)
class NodeEndpoint:
    """`--node HOST:TCP_PORT=URL`: the HTTP endpoint of the cluster member `system.clusters` lists as HOST:TCP_PORT."""

    host: str
    tcp_port: int
    url: str
    """`scheme://host:port`, credential-free."""

    def key(self) -> tuple[str, int]:
        return self.host, self.tcp_port


READ_TIMEOUT = 900.0
"""Default seconds without a byte of an HTTP reply (`--read-timeout`); wait_end_of_query=1 means an insert's
reply comes only once its part is written, so this bounds a whole insert, not a pause."""

DEFAULT_ZOOKEEPER_PATH = "/clickhouse/tables/{shard}"
"""Where replicated tables keep their ZooKeeper/Keeper state; `/{database}/{table}_local` is appended."""


@dataclass(frozen=True)
class TargetConfig:
    """Where rows go and how to reach it: what a sink needs, nothing more."""

    spec: TargetSpec
    database: str = "default"
    """Database requests run in unless they name another (the table's)."""
    credentials: Credentials = field(default_factory=Credentials)
    ca_file: Path | None = None
    insecure: bool = False
    insert_format: InsertFormat = "native"
    cluster: str | None = None
    insert_mode: InsertMode = "distributed"
    connections: int = 2
    """Requests in flight at once (the insert concurrency): sizes the connection and encoder pools."""
    schema: TableSchema = DEFAULT_SCHEMA
    """The table's columns: sinks create and check the table by it (the runner resolves dim and extras)."""
    compress: Compression = "auto"
    """HTTP insert body compression (ingest/clickhouse/compress.py); `auto`: none on loopback, zstd elsewhere."""
    nodes: tuple[NodeEndpoint, ...] = ()
    """HTTP endpoints of cluster members by their `system.clusters` host and TCP port (else: the target's port)."""
    zookeeper_path: str = DEFAULT_ZOOKEEPER_PATH
    """Prefix of a replicated `{table}_local`'s coordinator path; must hold the `{shard}` macro."""
    merges: MergePolicy = "during"
    """`deferred`: the table's background merges are stopped while a run loads it (ingest/sinks/merge_hold.py):
    the default of a run into the embedded target or one server."""
    read_timeout: float = READ_TIMEOUT
    """Seconds an HTTP request may wait for a byte of reply (a stalled proxy or server ends as a retriable error)."""

    def display(self) -> str:
        return self.spec.display()


@dataclass(frozen=True)
class SourceConfig:
    """Where shards come from and how downloads behave."""

    root: str = LAION_ROOT
    cache_dir: Path = Path("./laion-cache")
    keep_downloads: bool = False
    download_concurrency: int = 2
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    layout: Layout = LAION400M
    endpoint_url: str | None = None
    """S3-compatible endpoint (else AWS_ENDPOINT_URL / the store's own configuration)."""

    @property
    def is_http(self) -> bool:
        return self.root.startswith(("http://", "https://"))

    @property
    def is_object_store(self) -> bool:
        return self.root.startswith(OBJECT_STORE_SCHEMES)


@dataclass(frozen=True)
class LoadConfig:
    """How shards are cut, buffered and landed."""

    dim: int | None = None
    """Embedding dimension; None = read it from the first shard's npy header."""
    extra_columns: tuple[str, ...] = ()
    """Metadata columns loaded beside the tutorial's, typed from the parquet schema."""
    vector_codec: VectorCodec | None = None
    batch_rows: int = BLOCK_ROWS
    """Rows per block: the unit read, encoded and streamed (memory is bounded by blocks, not segments)."""
    segment_rows: int = SEGMENT_ROWS
    """Rows per segment: the unit committed (one INSERT = one part), tracked by the ledger and reconciled."""
    segment_bytes: int = SEGMENT_BYTES
    """Byte bound of a segment, estimated from dim and the shard's measured text bytes a row."""
    queue_depth: int = 2
    insert_concurrency: int = 2
    on_nan: NanPolicy = "fail-shard"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    drain_seconds: float = 25.0


@dataclass(frozen=True)
class QueryConfig:
    """A table on a target: all that index, search and eval need."""

    target: TargetConfig
    table: TableRef


@dataclass(frozen=True)
class RunConfig:
    """One load: which shards, from where, into which table, and where its state and report go."""

    shards: tuple[int, ...]
    table: TableRef
    target: TargetConfig
    source: SourceConfig = field(default_factory=SourceConfig)
    load: LoadConfig = field(default_factory=LoadConfig)
    state_path: Path | None = None
    report_path: Path | None = None
    progress: bool = True
    finalize: bool = False

    @property
    def query(self) -> QueryConfig:
        return QueryConfig(self.target, self.table)


def resolve_table(target: TargetSpec, database: str | None, table: str) -> TableRef:
    """`--database` wins, then the database in the target URL, then `default`."""
    return TableRef(database or target.database or "default", table)


def read_credentials(user: str | None, password_file: Path | None) -> Credentials:
    """User from flag/env; password only from env or a file, never from argv (it would show in `ps`)."""
    name = user or os.environ.get("CLICKHOUSE_USER") or "default"
    if password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"cannot read --password-file {password_file}: {exc.strerror}") from exc
    else:
        password = os.environ.get("CLICKHOUSE_PASSWORD", "")
    return Credentials(user=name, password=password)


@dataclass(frozen=True)
class TuneConfig:
    """`index --recall-target`: how the HNSW parameters are chosen, sized and recorded."""

    recall_target: float = 0.95
    sample_rows: int = 20_000
    queries: int = 200
    """Query rows the grid's recall is measured with: at 50, recall@10 swung ±0.015 between samples, and near
    the target the choice between neighbouring structures went either way (the 2M table's tuner chose M=12
    ef_c=24 at 0.950 in one run, M=16 ef_c=32 in three); the error falls with the square root of this."""
    search_lists: tuple[int, ...] = (32, 64, 128, 256, 512)
    quantizations: tuple[str, ...] = ("bf16", "i8", "b1")
    ms: tuple[int, ...] = (8, 12, 16, 32)
    efs: tuple[int, ...] = (24, 32, 64, 128)
    seed: int = 0
    max_memory: int | None = None
    """Bytes the index may take (--max-memory); None = the target's memory and vector index cache."""
    force: bool = False
    dry_run: bool = False
    verify_queries: int = 100
    """Query rows for the check on the full index after the build (the search list grows until it reaches R)."""
    max_graphs: int = 16
    """The most HNSW graphs a search visits (--max-graphs): new indexes get graphs as small as this allows, and
    a table of more parts is merged first (vector/graphs.py)."""
    project_rows: tuple[int, ...] = ()
    """--project-rows (repeatable): also project the build seconds and index memory at these many rows, with
    the structure the tuner would choose there (vector/tune_ahead.py, vector/sizing.py)."""


def parse_node(text: str) -> NodeEndpoint:
    """`HOST:TCP_PORT=URL` (as `system.clusters` names the member, then its HTTP endpoint) → a NodeEndpoint."""
    member, sep, url = text.partition("=")
    host, colon, port = member.rpartition(":")
    host = host.strip("[]")
    if not sep or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--node {text!r}: expected HOST:TCP_PORT=http(s)://HOST:PORT (the member's TCP port first)")
    spec = parse_target(url)
    if spec.kind != "http" or spec.database is not None:
        raise ConfigError(f"--node {text!r}: the URL must be http(s)://HOST:PORT with no database")
    return NodeEndpoint(host, int(port), spec.base_url)


def validate_zookeeper_path(path: str) -> str:
    """A coordinator path prefix: absolute, holding `{shard}`, nothing a string literal would need escaped."""
    if not path.startswith("/") or "{shard}" not in path or any(c in path for c in "'\\\"` \n"):
        raise ConfigError(
            f"--zookeeper-path {path!r}: expected an absolute path holding the {{shard}} macro, "
            "e.g. /clickhouse/tables/{shard}"
        )
    return path.rstrip("/")
