"""Parse a target string (`chdb:PATH`, `http://host:port/db`) into a typed, credential-free description."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from ingest.core.errors import ConfigError

DEFAULT_TARGET = "chdb:./laion-db"


@dataclass(frozen=True, slots=True)
class TargetSpec:
    kind: Literal["chdb", "http"]
    path: str = ""
    """chdb data directory."""
    base_url: str = ""
    """`scheme://host:port` for HTTP; never carries credentials."""
    database: str | None = None
    """Database named in the target URL, if any."""

    def display(self) -> str:
        return f"chdb:{self.path}" if self.kind == "chdb" else self.base_url


def parse_target(text: str) -> TargetSpec:
    if text.startswith("chdb:"):
        path = text[len("chdb:") :]
        if not path:
            raise ConfigError("target chdb: needs a data directory, e.g. chdb:./laion-db")
        return TargetSpec(kind="chdb", path=path)
    if text.startswith(("http://", "https://")):
        parts = urlsplit(text)
        if parts.username or parts.password:
            raise ConfigError(
                "credentials in the target URL are refused: use --user and CLICKHOUSE_PASSWORD or --password-file"
            )
        if not parts.hostname:
            raise ConfigError("target URL has no host: expected http://HOST:PORT[/DATABASE]")
        try:
            port = parts.port or (8443 if parts.scheme == "https" else 8123)
        except ValueError as exc:
            raise ConfigError("target URL has a bad port: expected http://HOST:PORT[/DATABASE]") from exc
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        db = parts.path.strip("/") or None
        if db is not None and "/" in db:
            raise ConfigError("target URL path must be a single database name: http://HOST:PORT/DATABASE")
        return TargetSpec(kind="http", base_url=f"{parts.scheme}://{host}:{port}", database=db)
    raise ConfigError(f"unknown target {text!r}: expected chdb:PATH or http(s)://HOST:PORT[/DATABASE]")
