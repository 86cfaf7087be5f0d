"""The Sink protocol every target implements, and what a target can do."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ingest.clickhouse.settings import ASYNC_INSERT_SINCE, Squash
from ingest.core.ids import TableRef
from ingest.core.pieces import Piece
from ingest.core.plan import SegmentPlan


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the target is and which features it has; decided once from `SELECT version()`."""

    version: str
    dedup_token: bool
    vector_index: bool
    cosine_distance: bool
    query_parameters: bool
    async_insert: bool = False
    """The server knows `async_insert` (21.11+; on by default from 26.2): we send async_insert=0."""
    in_process: bool = False
    """The engine runs in this process (chdb): its CPU is this process's CPU."""

    @property
    def missing(self) -> list[str]:
        """Human names of the features this server lacks."""
        absent = []
        if not self.cosine_distance:
            absent.append("cosineDistance")
        if not self.vector_index:
            absent.append("vector_similarity index")
        if not self.dedup_token:
            absent.append("insert_deduplication_token")
        return absent


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:4])


def server_info(version: str) -> ServerInfo:
    """Feature flags from a version string (26.9.2.1, 18.16.1 ...)."""
    v = parse_version(version)
    return ServerInfo(
        version=version,
        dedup_token=v >= (22, 2),
        vector_index=v >= (25, 8),
        cosine_distance=v >= (21, 11),
        query_parameters=v >= (19, 11),
        async_insert=v >= ASYNC_INSERT_SINCE,
    )


class Sink(Protocol):
    """A ClickHouse target. Methods are coroutines; blocking engines run in an executor behind them."""

    info: ServerInfo

    async def connect(self) -> ServerInfo:
        """Reach the target, learn its version and features."""
        ...

    async def ensure_table(self, ref: TableRef) -> None:
        """Create database and table if missing; refuse a table whose schema differs."""
        ...

    async def insert(
        self,
        ref: TableRef,
        segment: SegmentPlan,
        blocks: AsyncIterator[Piece],
        token: str | None,
        query_id: str | None = None,
    ) -> None:
        """Insert one segment as one INSERT, streaming `blocks` as they come (row blocks, which the server squashes
        into one block, or one column-major block: ingest/core/pieces.py), so the segment is one part and lands
        whole or not at all. `token` dedups a retried segment where
        supported; `query_id` names the INSERT on a server (the segment's, SegmentPlan.query_id). The caller
        closes `blocks`, after this returns: nothing iterates them then (ingest/sinks/body_pump.py)."""
        ...

    async def wait_query_gone(self, query_id: str) -> None:
        """Return once no query with `query_id` (or started by it) runs on the target: an INSERT of a killed run
        may still be writing its segment when the next run counts the range. Transient error if it lasts."""
        ...

    async def count_range(self, ref: TableRef, first_id: int, last_id: int) -> int:
        """Rows with `first_id <= id <= last_id`."""
        ...

    async def delete_range(self, ref: TableRef, first_id: int, last_id: int) -> None:
        """Delete rows in an id range and wait until the delete is applied."""
        ...

    async def query(self, sql: str, settings: dict[str, str | int] | None = None) -> list[dict[str, Any]]:
        """Run a small query; rows as dicts (JSON types)."""
        ...

    async def execute(self, sql: str, settings: dict[str, str | int] | None = None) -> None:
        """Run a statement with no result (DDL, ALTER)."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class TakesColumns(Protocol):
    """A sink that takes a segment as one column-major block when `column_major` (HTTP Native): the reader then
    streams it column by column; other sinks get row blocks."""

    column_major: bool


@runtime_checkable
class CountsBytes(Protocol):
    """A sink with a wire (HTTP) counts the insert body bytes it sent."""

    bytes_sent: int


def squash_of(segment: SegmentPlan) -> Squash:
    """The squashing that makes `segment` one block on the server."""
    return Squash(rows=segment.rows)
