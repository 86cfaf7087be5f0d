"""Every knob of a run in one frozen dataclass, built once from flags and environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ingest.errors import ConfigError
from ingest.sql import TableRef
from ingest.target import TargetSpec, parse_target

LAION_ROOT = "https://deploy.laion.ai/8f83b608504d46bb81708ec86e912220/embeddings/"

InsertFormat = Literal["native", "rowbinary"]
NanPolicy = Literal["fail-shard", "skip-row"]


@dataclass(frozen=True)
class Credentials:
    """User and password for an HTTP target. The password never appears in repr, logs or errors."""

    user: str = "default"
    password: str = field(default="", repr=False)

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password={'***' if self.password else ''!r})"


@dataclass(frozen=True)
class Settings:
    source: str
    shards: tuple[int, ...]
    target: TargetSpec
    table: TableRef
    dim: int = 512
    batch_rows: int = 8192
    queue_depth: int = 2
    download_concurrency: int = 2
    insert_concurrency: int = 2
    cache_dir: Path = Path("./laion-cache")
    keep_downloads: bool = False
    insert_format: InsertFormat = "native"
    credentials: Credentials = Credentials()
    ca_file: Path | None = None
    insecure: bool = False
    state_path: Path | None = None
    report_path: Path | None = None
    on_nan: NanPolicy = "fail-shard"
    max_retries: int = 8
    retry_max_seconds: float = 30.0
    drain_seconds: float = 25.0
    progress: bool = True
    cluster: str | None = None
    insert_mode: Literal["distributed", "local"] = "distributed"
    finalize: bool = False

    @property
    def source_is_http(self) -> bool:
        return self.source.startswith(("http://", "https://"))


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


def target_from_text(text: str) -> TargetSpec:
    return parse_target(text)
