"""The embedded target: ClickHouse in-process through chdb.

chdb blocks the calling thread, so queries and DDL run on one dedicated worker thread and each concurrent insert
on a session of its own (chdb runs one statement at a time per session): the event loop keeps reading shards
while the engine parses, squashes and writes segments on as many threads as there are insert sessions.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from ingest.clickhouse.replies import DEDUP_WINDOW, json_rows, parse_error
from ingest.clickhouse.settings import insert_settings, settings_clause
from ingest.clickhouse.sql import (
    count_range_sql,
    create_database_sql,
    create_table_sql,
    delete_range_sql,
    describe_sql,
    insert_from_file_sql,
    table_problem,
)
from ingest.core.config import TargetConfig
from ingest.core.errors import ConfigError, SchemaMismatchError, TargetError
from ingest.core.ids import TableRef
from ingest.core.pieces import Piece
from ingest.core.plan import SegmentPlan
from ingest.sinks.base import ServerInfo, server_info, squash_of
from ingest.sinks.body_pump import pumped
from ingest.sinks.fifo_body import abort_statement, encoded_blocks, feed_fifo, fifo_path
from ingest.sinks.merge_hold import MergeHold

log = logging.getLogger(__name__)

PUMP_DEPTH = 1
"""Encoded blocks queued between the insert's body pump and the pipe writer: encoding runs one block ahead."""


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
        self._insert_sessions = max(1, target.connections)
        self._insert_pool = ThreadPoolExecutor(self._insert_sessions, thread_name_prefix="chdb-insert")
        self._write_pool = ThreadPoolExecutor(2 * self._insert_sessions, thread_name_prefix="chdb-body")
        self._idle: asyncio.Queue[Any] | None = None
        self._opened: list[Any] = []
        self.merge_hold = MergeHold(self.execute, self.query, enabled=target.merges == "deferred")

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
        self.info = replace(server_info(version), in_process=True)
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
        self,
        ref: TableRef,
        segment: SegmentPlan,
        blocks: AsyncIterator[Piece],
        token: str | None,
        query_id: str | None = None,
    ) -> None:
        """One `INSERT … FROM INFILE pipe FORMAT Native` per segment, its blocks encoded and streamed as they come
        (ingest/sinks/fifo_body.py); each concurrent insert has its own chdb session, so segments are parsed,
        squashed and written by the engine on as many threads as `--insert-concurrency`."""
        settings = insert_settings(
            token=token,
            squash=squash_of(segment),
            dedup_token=True,
            async_insert=self.info.async_insert,
            skip_indexes=True,  # the load never pays for vector indexes: `laion-ingest index` builds them
        )
        async with self.merge_hold.inserting(ref):
            await self._insert_from_fifo(ref, blocks, settings_clause(settings))

    async def _insert_from_fifo(self, ref: TableRef, blocks: AsyncIterator[Piece], clause: str) -> None:
        loop = asyncio.get_running_loop()
        session = await self._inserter()
        with fifo_path() as path:
            sql = insert_from_file_sql(ref, str(path), clause)
            statement = loop.run_in_executor(self._insert_pool, self._query_on, session, sql)
            statement.add_done_callback(lambda _: self._release(session))
            try:
                pieces = encoded_blocks(blocks, self._write_pool, ref.key)
                async with pumped(pieces, PUMP_DEPTH) as feed:
                    await feed_fifo(path, feed, statement, self._write_pool)
            except BaseException:
                # feed_fifo wrote an unparsable block already if it had opened the pipe (before closing its end, so
                # the engine never reads a clean EOF); this one covers an engine that had not opened its end yet
                await asyncio.shield(abort_statement(path, statement))  # it fails: nothing of it is committed
                raise
            await statement

    async def _inserter(self) -> Any:
        """A session of the insert pool (opened on first use; one statement at a time each)."""
        if self._idle is None:
            self._idle = asyncio.Queue()
            for _ in range(self._insert_sessions):
                self._idle.put_nowait(await self._call(self._new_session))
        return await self._idle.get()

    def _release(self, session: Any) -> None:
        if self._idle is not None:
            self._idle.put_nowait(session)

    def _new_session(self) -> Any:
        from chdb import session

        opened = session.Session(str(self._path))  # type: ignore[no-untyped-call]
        self._opened.append(opened)
        return opened

    @staticmethod
    def _query_on(session: Any, sql: str) -> None:
        try:
            session.query(sql, "CSV")
        except Exception as exc:
            raise map_chdb_error(exc) from exc

    async def count_range(self, ref: TableRef, first_id: int, last_id: int) -> int:
        rows = await self._call(self._rows, count_range_sql(ref, first_id, last_id))
        return int(rows[0]["n"])

    async def wait_query_gone(self, query_id: str) -> None:
        """Nothing to wait for: the engine runs in this process, so a killed run's INSERT died with it, and this
        run's own inserts have returned before their ranges are counted (`query_id` is not sent here)."""

    async def delete_range(self, ref: TableRef, first_id: int, last_id: int) -> None:
        sql = delete_range_sql(ref, first_id, last_id) + settings_clause({"mutations_sync": 2})
        async with self.merge_hold.lifted(ref):
            await self._call(self._raw, sql)

    async def query(self, sql: str, settings: dict[str, str | int] | None = None) -> list[dict[str, Any]]:
        return list(await self._call(self._rows, sql, settings))

    async def execute(self, sql: str, settings: dict[str, str | int] | None = None) -> None:
        await self._call(self._raw, sql + settings_clause(settings))

    async def close(self) -> None:
        if self._session is not None:
            await self.merge_hold.release()

        def work() -> None:
            for opened in self._opened:
                opened.close()
            self._opened.clear()
            if self._session is not None:
                self._session.close()
                self._session = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

        await self._call(work)
        self._executor.shutdown(wait=True)
        self._insert_pool.shutdown(wait=True)
        self._write_pool.shutdown(wait=True)
