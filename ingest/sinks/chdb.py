"""The embedded target: ClickHouse in-process through chdb.

chdb blocks the calling thread, so every call runs on one dedicated worker thread: the event loop keeps reading
and decoding shards while an insert runs, and the engine sees one caller at a time.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from ingest.clickhouse.sql import (
    count_range_sql,
    create_database_sql,
    create_table_sql,
    delete_range_sql,
    describe_sql,
    quote_string,
    table_problem,
)
from ingest.core.config import TargetConfig
from ingest.core.errors import ConfigError, SchemaMismatchError, TargetError, classify_clickhouse_error
from ingest.core.ids import TableRef
from ingest.sinks.base import ServerInfo, server_info

DEDUP_WINDOW = 100_000
_CODE = re.compile(r"Code:\s*(\d+)")


def map_chdb_error(exc: Exception) -> TargetError:
    """chdb raises one exception type with the server text: recover the code and the first line."""
    text = str(exc)
    m = _CODE.search(text)
    code = int(m.group(1)) if m else None
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    first = re.sub(r"\s*Stack trace.*$", "", first)
    return classify_clickhouse_error(code, f"chdb: {first}")


def settings_clause(settings: dict[str, str | int] | None) -> str:
    if not settings:
        return ""
    parts = []
    for key, value in settings.items():
        if not re.match(r"^[a-z_][a-z0-9_]*$", key):
            raise ValueError(f"bad setting name {key!r}")
        parts.append(f"{key} = {value}" if isinstance(value, int) else f"{key} = {quote_string(value)}")
    return " SETTINGS " + ", ".join(parts)


class ChdbSink:
    """Sink over a chdb data directory (`chdb:PATH`)."""

    def __init__(self, target: TargetConfig) -> None:
        self._path = Path(target.spec.path)
        self._schema = target.schema
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chdb")
        self._session: Any = None
        self._lock_fd: int | None = None
        self.info = server_info("0")

    async def _call(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _lock(self) -> None:
        """One process per data directory: an flock the kernel drops when we exit, even on kill -9."""
        lock_path = self._path / ".laion-ingest.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                f"chdb data directory {self._path} is in use by another process (pid {holder}); "
                "chdb allows one process per directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _open(self) -> str:
        from chdb import session

        try:
            self._path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use chdb data directory {self._path}: {exc.strerror}") from exc
        self._lock()
        try:
            self._session = session.Session(str(self._path))  # type: ignore[no-untyped-call]
        except OSError as exc:
            raise ConfigError(f"cannot use chdb data directory {self._path}: {exc.strerror}") from exc
        except Exception as exc:
            raise map_chdb_error(exc) from exc
        return str(self._raw("SELECT version() AS v", "CSV")).strip().strip('"')

    def _raw(self, sql: str, fmt: str = "CSV") -> Any:
        try:
            return self._session.query(sql, fmt)
        except Exception as exc:
            raise map_chdb_error(exc) from exc

    def _rows(self, sql: str, settings: dict[str, str | int] | None = None) -> list[dict[str, Any]]:
        merged: dict[str, str | int] = {"output_format_json_quote_64bit_integers": 0, **(settings or {})}
        res = self._raw(sql + settings_clause(merged), "JSONEachRow")
        data = res.bytes() if hasattr(res, "bytes") else bytes(res)
        return [orjson.loads(line) for line in data.splitlines() if line.strip()]

    async def connect(self) -> ServerInfo:
        version = await self._call(self._open)
        self.info = server_info(version)
        return self.info

    async def ensure_table(self, ref: TableRef) -> None:
        def work() -> None:
            self._raw(create_database_sql(ref.database))
            self._raw(create_table_sql(ref, DEDUP_WINDOW, self._schema))
            problem = table_problem(self._rows(describe_sql(ref)), self._schema)
            if problem:
                raise SchemaMismatchError(f"table {ref.key} {problem}")

        await self._call(work)

    async def insert(self, ref: TableRef, batch: pa.RecordBatch, token: str | None) -> None:
        # the load never pays for vector indexes: parts get them from `laion-ingest index` (or later merges)
        settings: dict[str, str | int] = {"materialize_skip_indexes_on_insert": 0}
        if token:
            settings["insert_deduplication_token"] = token
        clause = settings_clause(settings)

        def work() -> None:
            tbl = pa.Table.from_batches([batch])  # noqa: F841 - read by name by chdb's Python() table function
            self._raw(f"INSERT INTO {ref.sql} SELECT * FROM Python(tbl){clause}")

        await self._call(work)

    async def count_range(self, ref: TableRef, first_id: int, last_id: int) -> int:
        rows = await self._call(self._rows, count_range_sql(ref, first_id, last_id))
        return int(rows[0]["n"])

    async def delete_range(self, ref: TableRef, first_id: int, last_id: int) -> None:
        sql = delete_range_sql(ref, first_id, last_id) + settings_clause({"mutations_sync": 2})
        await self._call(self._raw, sql)

    async def query(self, sql: str, settings: dict[str, str | int] | None = None) -> list[dict[str, Any]]:
        return list(await self._call(self._rows, sql, settings))

    async def execute(self, sql: str, settings: dict[str, str | int] | None = None) -> None:
        await self._call(self._raw, sql + settings_clause(settings))

    async def close(self) -> None:
        def work() -> None:
            if self._session is not None:
                self._session.close()
                self._session = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

        await self._call(work)
        self._executor.shutdown(wait=True)
