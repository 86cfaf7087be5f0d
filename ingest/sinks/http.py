"""ClickHouse over HTTP: one aiohttp session, Native (or RowBinary) bodies streamed, errors mapped at this edge.

Building a request (URL, parameters, headers) is pure and lives in ingest/clickhouse/http_request.py; `HttpSink`
only sends.
Features are gated on the server's version (18.16 lacks dedup tokens and `mutations_sync`).
Insert bodies are compressed per `--compress` (plan and bytes in ingest/clickhouse/compress.py) and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pyarrow as pa
from yarl import URL

from ingest.clickhouse.compress import BodyCodec, compressed_body, is_loopback, plan_compression
from ingest.clickhouse.http_request import HttpRequest, build_request, insert_sql, pending_mutations_sql, server_error
from ingest.clickhouse.replies import DEDUP_WINDOW, json_rows, one_line
from ingest.clickhouse.settings import Squash
from ingest.clickhouse.settings import insert_settings as settings_for_insert
from ingest.clickhouse.sql import (
    count_range_sql,
    create_database_sql,
    create_table_sql,
    delete_range_sql,
    describe_sql,
    running_query_sql,
    table_problem,
)
from ingest.clickhouse.wire import ABORT_BLOCK, SEAM_BYTES, encode_piece, encodes_as_views, split_head, split_tail
from ingest.core import metrics
from ingest.core.config import TargetConfig
from ingest.core.errors import (
    CUT_BODY_CLICKHOUSE_CODES,
    SchemaMismatchError,
    TargetError,
    TransientTargetError,
    UncertainInsertError,
    UnreachableTargetError,
)
from ingest.core.ids import TableRef
from ingest.core.pieces import BlockStart, Piece
from ingest.core.plan import SegmentPlan
from ingest.sinks.base import ServerInfo, parse_version, server_info, squash_of
from ingest.sinks.body_pump import pumped
from ingest.sinks.merge_hold import MergeHold, heal
from ingest.sinks.tls import ssl_context

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 << 20
"""Body pieces handed to the transport: big enough to be cheap (each is one write and one drain on the loop; 4 MiB
against 1 MiB saved ~0.2 of ~3.3 CPU-seconds on a 1M-row shard into 26.9, medians of 8 interleaved runs), small
enough to keep the loop responsive."""
PUMP_DEPTH = 2
"""Body pieces (each at most CHUNK_BYTES) queued between the insert's body pump and aiohttp's writer."""
CONNECT_TIMEOUT = 10.0
KEEPALIVE_SECONDS = 2.0
"""Below the server's keep_alive_timeout (3 s on 18.16) so we never reuse a socket it is closing."""
MUTATION_TIMEOUT = 300.0
SETTLE_TIMEOUT = 60.0
"""Seconds an INSERT of a segment left running by a dead run is waited for before the landing retries later."""

MUTATIONS_SYNC_SINCE = (20, 1)
"""The `mutations_sync` setting (wait for ALTER DELETE) exists from 20.1; older servers are polled."""


def insert_settings(info: ServerInfo, token: str | None, squash: Squash | None = None) -> dict[str, str | int]:
    """Only settings the server knows (18.16 would refuse the whole insert for an unknown one).

    Servers with vector indexes also skip building them on insert: the load never pays for the index.
    """
    return settings_for_insert(
        token=token,
        squash=squash,
        dedup_token=info.dedup_token,
        async_insert=info.async_insert,
        skip_indexes=info.vector_index,
    )


def has_mutations_sync(info: ServerInfo) -> bool:
    return parse_version(info.version) >= MUTATIONS_SYNC_SINCE


def _chunks(parts: list[memoryview]) -> list[memoryview]:
    """The encoded buffers in pieces of at most CHUNK_BYTES (views, no joining copy)."""
    return [part[start : start + CHUNK_BYTES] for part in parts for start in range(0, part.nbytes, CHUNK_BYTES)]


async def _prepend(first: Piece | None, rest: AsyncIterator[Piece]) -> AsyncIterator[Piece]:
    """`first` (a piece already taken from `rest`; None when `rest` was empty) then the rest."""
    if first is None:
        return
    yield first
    async for piece in rest:
        yield piece


class HttpSink:
    """Sink over ClickHouse's HTTP interface (`http(s)://HOST:PORT`)."""

    def __init__(self, target: TargetConfig) -> None:
        self._target = target
        self._schema = target.schema
        self._base = target.spec.base_url
        self._where = urlsplit(self._base).netloc
        self._creds = target.credentials
        self._format = target.insert_format
        self._ssl = ssl_context(target)
        self._session: aiohttp.ClientSession | None = None
        workers = max(1, target.connections)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="encode")
        self._limit = workers + 2
        self.info = server_info("0")
        self.insert_extra: dict[str, str | int] = {}
        """Settings added to every insert (the cluster sink's synchronous Distributed insert); empty by default."""
        self.bytes_sent = 0
        """Insert body bytes put on the wire (after compression), for bytes/row in the run summary."""
        self.column_major = self._format == "native"
        """Native bodies take a segment as one column-major block (ingest/core/pieces.py): no squash on the server."""
        self.merge_hold = MergeHold(self.execute, self.query, enabled=target.merges == "deferred")

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limit,
                limit_per_host=self._limit,
                keepalive_timeout=KEEPALIVE_SECONDS,
                ssl=self._ssl if self._ssl is not None else True,
            )
            timeout = aiohttp.ClientTimeout(
                total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT, sock_read=self._target.read_timeout
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=timeout, auto_decompress=True, trust_env=False
            )
        return self._session

    def _request(
        self, sql: str, settings: dict[str, str | int] | None = None, database: str | None = None
    ) -> HttpRequest:
        db = database or self._target.database
        return build_request(self._base, self._creds, db, sql, settings)

    async def _send(
        self,
        req: HttpRequest,
        body: AsyncIterator[memoryview | bytes] | None = None,
        size: int | None = None,
    ) -> bytes:
        """POST; every aiohttp/OS failure leaves here as an error of our tree.

        Queries and DDL (no streamed body) are resent once when a pooled socket turns out dead; an insert whose
        body may have reached the server is never resent here: it fails as uncertain and the pipeline counts.
        """
        insert = body is not None
        attempts = 1 if insert else 2
        for attempt in range(1, attempts + 1):
            try:
                return await self._send_once(req, body, size)
            except aiohttp.ClientConnectorError as exc:  # nothing was sent (includes TLS failures)
                raise self._mapped(exc, insert) from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if attempt == attempts:
                    raise self._mapped(exc, insert) from None
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise self._mapped(exc, insert) from None
        raise AssertionError("unreachable")

    async def _send_once(
        self, req: HttpRequest, body: AsyncIterator[memoryview | bytes] | None, size: int | None
    ) -> bytes:
        headers = dict(req.headers)
        if size is not None:
            headers["Content-Length"] = str(size)  # known length: no chunked framing, server sees truncation
        data = body if body is not None else req.body
        async with self._client().post(URL(req.url, encoded=True), data=data, headers=headers) as resp:
            payload = await resp.read()
            status = resp.status
            code = resp.headers.get("X-ClickHouse-Exception-Code")
        if status >= 300 or code is not None:
            raise server_error(status, code, payload.decode(errors="replace"), self._creds.user, self._where)
        return payload

    def _mapped(self, exc: BaseException, insert: bool) -> TargetError:
        """aiohttp/OS exceptions → our tree; the texts name the server, never the credentials."""
        if isinstance(exc, aiohttp.ClientSSLError):
            return TargetError(
                f"TLS with ClickHouse at {self._where} failed ({type(exc).__name__}); for a private CA pass --ca-file"
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            return UnreachableTargetError(f"cannot connect to ClickHouse at {self._where}: {reason}")
        what = "timed out" if isinstance(exc, TimeoutError) else f"connection lost ({type(exc).__name__})"
        if insert:
            return UncertainInsertError(f"insert into ClickHouse at {self._where}: {what}")
        return TransientTargetError(f"request to ClickHouse at {self._where}: {what}")

    # -- Sink -------------------------------------------------------------------------------------------------
    async def connect(self) -> ServerInfo:
        raw = await self._send(self._request("SELECT version()", database="default"))
        self.info = server_info(raw.decode().strip())
        log.debug("connected to ClickHouse %s at %s as %s", self.info.version, self._where, self._creds.user)
        return self.info

    async def ensure_table(self, ref: TableRef) -> None:
        await self._send(self._request(create_database_sql(ref.database), database="default"))
        window = DEDUP_WINDOW if self.info.dedup_token else None
        await self._send(self._request(create_table_sql(ref, window, self._schema), database=ref.database))
        problem = table_problem(await self.query(describe_sql(ref)), self._schema)
        if problem:
            raise SchemaMismatchError(f"table {ref.key} {problem}")
        await heal(self.execute, ref)  # what a killed `--merges deferred` run left stopped

    async def insert(
        self,
        ref: TableRef,
        segment: SegmentPlan,
        blocks: AsyncIterator[Piece],
        token: str | None,
        query_id: str | None = None,
    ) -> None:
        """One POST per segment; its chunked body is encoded piece by piece as `blocks` yields them."""
        codec = self._codec()
        req = build_request(
            self._base,
            self._creds,
            ref.database,
            insert_sql(ref, self._format),
            {**insert_settings(self.info, token, squash_of(segment)), **self.insert_extra, **codec.params},
            insert=True,
            query_id=query_id,
        )
        async with self.merge_hold.inserting(ref):
            first = await anext(blocks, None)  # before the pump starts: nothing else iterates `blocks` yet
            size = first.nbytes if isinstance(first, BlockStart) and codec.identity else None
            try:
                async with pumped(self._wire_body(codec, self._body(ref, _prepend(first, blocks))), PUMP_DEPTH) as feed:
                    await self._send(self._wired(req, codec), feed, size)
            except TargetError as exc:
                if exc.code in CUT_BODY_CLICKHOUSE_CODES:  # the server read a body cut short: the cut is the cause
                    raise UncertainInsertError(f"{exc} (the insert body was cut on the way)", exc.code) from None
                raise

    async def _body(self, ref: TableRef, blocks: AsyncIterator[Piece]) -> AsyncIterator[memoryview | bytes]:
        """The insert body: each piece (a row block, or a piece of one column-major block) encoded on the encoder
        pool when it arrives, streamed in chunks.

        The one place an insert body is produced: a wrapper (compression) wraps this iterator, and a pump task
        owned by the insert (ingest/sinks/body_pump.py) iterates both, never aiohttp's writer task.

        A server reading a body that ends exactly between two blocks sees a clean end of data and commits the
        blocks before it (18.16 does, chunked or not). So no chunk ever ends on a piece boundary: the last
        SEAM_BYTES of a piece travel in one chunk with the first SEAM_BYTES of the next, and a cut (a kill, a
        lost connection, a cancelled insert) always leaves the server a truncated block, which fails the INSERT.
        When the source fails, row blocks end with an unparsable block header after the current block, for the
        same reason; a column-major block just stops short of the rows its header promised (the held-back bytes
        are not sent). The pump keeps the source's error as the cause before the transport turns it into a cut.
        """
        loop = asyncio.get_running_loop()
        carry = b""  # the held-back end of the last piece sent
        one_block = False
        try:
            async for piece in blocks:
                if isinstance(piece, pa.RecordBatch) and piece.num_rows == 0:
                    continue
                one_block = one_block or isinstance(piece, BlockStart)
                try:
                    if encodes_as_views(piece):  # a vector run: views, no thread hop (one per 4,096 rows)
                        parts = encode_piece(piece, self._format)
                    else:
                        parts = await loop.run_in_executor(self._pool, encode_piece, piece, self._format)
                except (ValueError, pa.ArrowException) as exc:
                    raise TargetError(f"cannot encode batch for {ref.key}: {exc}") from None
                head, rest = split_head(parts, SEAM_BYTES)
                if not rest:  # a tiny piece: carry all of it into the next seam
                    carry += head
                    continue
                yield carry + head
                rest, carry = split_tail(rest, SEAM_BYTES)
                for chunk in _chunks(rest):
                    yield chunk
        except Exception:
            if not one_block:
                yield carry + ABORT_BLOCK
            raise
        if carry:
            yield carry

    # -- body compression and byte counting: one wrapper around any streamed insert body ----------------------
    def _codec(self) -> BodyCodec:
        host = urlsplit(self._base).hostname or ""
        return plan_compression(self._target.compress, parse_version(self.info.version), is_loopback(host))

    def _count(self, n: int) -> None:
        self.bytes_sent += n
        metrics.BYTES_SENT.inc(n)

    def _wired(self, req: HttpRequest, codec: BodyCodec) -> HttpRequest:
        """The request with the codec's headers."""
        return HttpRequest(req.url, {**req.headers, **codec.headers}, req.body)

    def _wire_body(
        self, codec: BodyCodec, body: AsyncIterator[memoryview | bytes]
    ) -> AsyncIterator[memoryview | bytes]:
        """The body compressed (in the pool) and counted."""
        offload = partial(asyncio.get_running_loop().run_in_executor, self._pool)
        return compressed_body(body, codec, self._count, offload)

    async def count_range(self, ref: TableRef, first_id: int, last_id: int) -> int:
        rows = await self.query(count_range_sql(ref, first_id, last_id))
        return int(rows[0]["n"])

    async def wait_query_gone(self, query_id: str) -> None:
        """Poll `system.processes` until nothing runs under `query_id` (a dead client's INSERT is finished or
        failed by the server within seconds). A refused connection is no answer: behind a proxy or a load balancer
        the server may still be writing our INSERT (the soak saw a segment twice so), so it fails the attempt like
        the count after it would; a cluster decides per member (fanout.gone_or_down).

        18.16 lists an HTTP INSERT once it has read the first MiB of its body (or all of it, if shorter): a short
        body whose last bytes are still on the way is not seen, but they travel with the killed client's last write.
        """
        deadline = time.monotonic() + SETTLE_TIMEOUT
        delay = 0.05
        while True:
            rows = await self.query(running_query_sql(query_id), database="default")
            if int(rows[0]["n"]) == 0:
                return
            if time.monotonic() > deadline:
                raise TransientTargetError(
                    f"an INSERT with query_id {query_id} still runs on ClickHouse at {self._where} after "
                    f"{SETTLE_TIMEOUT:.0f}s (see system.processes); its range is counted once it ends"
                )
            await asyncio.sleep(delay)
            delay = min(0.5, delay * 2)

    async def delete_range(self, ref: TableRef, first_id: int, last_id: int) -> None:
        sql = delete_range_sql(ref, first_id, last_id)
        async with self.merge_hold.lifted(ref):
            if has_mutations_sync(self.info):
                await self.execute(sql, {"mutations_sync": 2})
                return
            await self.execute(sql)
            await self._wait_mutations(ref)

    async def _wait_mutations(self, ref: TableRef) -> None:
        """18.16 applies ALTER DELETE in the background: poll system.mutations until the table has none left."""
        deadline = time.monotonic() + MUTATION_TIMEOUT
        delay = 0.05
        while True:
            rows = await self.query(pending_mutations_sql(ref))
            if int(rows[0]["n"]) == 0:
                return
            if time.monotonic() > deadline:
                raise TransientTargetError(
                    f"delete in {ref.key} not applied after {MUTATION_TIMEOUT:.0f}s (see system.mutations)"
                )
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)

    async def query(
        self, sql: str, settings: dict[str, str | int] | None = None, database: str | None = None
    ) -> list[dict[str, Any]]:
        """`database` overrides the session database (e.g. `default` before the target database exists)."""
        merged: dict[str, str | int] = {"output_format_json_quote_64bit_integers": 0, **(settings or {})}
        text = sql.strip().rstrip(";") + "\nFORMAT JSONEachRow"
        raw = await self._send(self._request(text, merged, database))
        return json_rows(raw, self._where)

    async def execute(
        self, sql: str, settings: dict[str, str | int] | None = None, database: str | None = None
    ) -> None:
        await self._send(self._request(sql, settings, database))

    async def close(self) -> None:
        if self._session is not None:
            await self.merge_hold.release()
            await self._session.close()
            self._session = None
        self._pool.shutdown(wait=True)


__all__ = ["DEDUP_WINDOW", "HttpRequest", "HttpSink", "build_request", "one_line"]
