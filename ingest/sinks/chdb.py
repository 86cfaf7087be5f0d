"""The embedded target: ClickHouse in-process through chdb.

chdb blocks the calling thread, so every call runs on one dedicated worker thread: the event loop keeps reading
and decoding shards while an insert runs, and the engine sees one caller at a time.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa

from ingest.clickhouse.replies import DEDUP_WINDOW, json_rows, parse_error
from ingest.clickhouse.settings import insert_settings, settings_clause
from ingest.clickhouse.sql import (
    count_range_sql,
    create_database_sql,
    create_table_sql,
    delete_range_sql,
    describe_sql,
    table_problem,
)
from ingest.core.config import TargetConfig
from ingest.core.errors import ConfigError, SchemaMismatchError, TargetError
from ingest.core.ids import TableRef
from ingest.core.plan import SegmentPlan
from ingest.sinks.base import ServerInfo, server_info, squash_of


def map_chdb_error(exc: Exception) -> TargetError:
    """chdb raises one exception type with the server text: recover the code and the first line."""
    reply = parse_error(str(exc))
    if not reply.first_line:
        return TargetError(f"chdb: {type(exc).__name__}")
    return reply.error("chdb")


class ChdbSink:
    """Sink over a chdb data directory (`chdb:PATH`)."""

    def __init__(self, target: TargetConfig) -> None:
        self._path = Path(target.spec.path)
        self._schema = target.schema
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chdb")
        self._session: Any = None
        self._lock_fd: int | None = None
        self.info = server_info("0")
        self.arrow_stream = False
        """Stream a segment to chdb as a RecordBatchReader instead of one Table (see `insert`)."""

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
        return json_rows(data, "chdb")

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

    async def insert(
        self, ref: TableRef, segment: SegmentPlan, blocks: AsyncIterator[pa.RecordBatch], token: str | None
    ) -> None:
        """One `INSERT … SELECT * FROM Python(…)` per segment.

        Default: the segment's blocks as one Arrow Table (chunks, no concatenation), gathered while they are read
        and handed over whole: the Python() table function needs its data at call time, and the Table is what
        chdb's own squashing would hold anyway. `arrow_stream = True` streams a RecordBatchReader instead,
        pulling each block from the event loop while the engine runs.
        """
        settings = insert_settings(
            token=token,
            squash=squash_of(segment),
            dedup_token=True,
            async_insert=self.info.async_insert,
            skip_indexes=True,  # the load never pays for vector indexes: `laion-ingest index` builds them
        )
        sql = f"INSERT INTO {ref.sql} SELECT * FROM Python(data){settings_clause(settings)}"
        if self.arrow_stream:
            loop = asyncio.get_running_loop()
            first = await anext(blocks, None)
            if first is None:
                return

            def pull() -> Iterator[pa.RecordBatch]:
                yield first
                while (nxt := asyncio.run_coroutine_threadsafe(anext(blocks, None), loop).result()) is not None:
                    yield nxt

            def stream() -> None:
                data = pa.RecordBatchReader.from_batches(first.schema, pull())  # noqa: F841 - read by chdb by name
                self._raw(sql)

            await self._call(stream)
            return
        batches = [b async for b in blocks if b.num_rows]
        if not batches:
            return

        def work() -> None:
            data = pa.Table.from_batches(batches)  # noqa: F841 - read by name by chdb's Python() table function
            self._raw(sql)

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
