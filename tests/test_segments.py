"""Segments on the real engines: one segment = one INSERT = one part, and a segment cut mid-body commits nothing.

Parts are counted by block numbers: every part a MergeTree INSERT writes takes the next block number, and merges
keep the range, so `max(max_block_number) - min(min_block_number) + 1` over the active parts is the number of
parts ever inserted, however much was merged since.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from cli_run import cli
from exact import assert_table_equals, chdb_rows, chdb_table, expected_rows, server_table
from server_fixtures import server_version
from sink_batches import small_batch

from ingest.clickhouse.http_request import build_request, insert_sql
from ingest.clickhouse.settings import Squash
from ingest.clickhouse.sql import create_table_sql
from ingest.clickhouse.wire import encode_native
from ingest.core.arrays import vectors
from ingest.core.config import Credentials, TargetConfig
from ingest.core.errors import TargetError
from ingest.core.ids import TableRef
from ingest.core.plan import plan_segments
from ingest.core.schema import TableSchema
from ingest.core.target import parse_target
from ingest.sinks.base import ServerInfo, server_info
from ingest.sinks.chdb import ChdbSink
from ingest.sinks.http import HttpSink, insert_settings
from ingest.stages.segment_columns import WindowPool

STRIDE = 10_000_000
BLOCK = 500
DIM = 16


def block(first_id: int, n: int = BLOCK) -> pa.RecordBatch:
    return small_batch(first_id, n, DIM)


def inserted_parts(rows: list[dict[str, int]]) -> int:
    return int(rows[0]["hi"]) - int(rows[0]["lo"]) + 1


def info_of(server: Any) -> ServerInfo:
    """The features of a `server` fixture's version, as our sink learns them from `SELECT version()`."""
    return server_info("18.16.1" if server_version(server) == "18.16" else "26.9.2.1")


PARTS_SQL = (
    "SELECT min(min_block_number) AS lo, max(max_block_number) AS hi FROM system.parts "
    "WHERE database = '{db}' AND table = 'laion' AND active"
)


def run_args(src: Path, target: str, state: Path, *extra: str) -> list[str]:
    return ["run", "--source", str(src), "--shards", "0-1", "--target", target, "--dim", str(DIM), "--batch-rows",
            "250", "--segment-rows", "1000", "--no-progress", "--state", str(state), *extra]  # fmt: skip


def test_chdb_one_segment_is_one_part(make_shards, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_shards([0, 1], rows=3300, dim=DIM)
    db = tmp_path / "db"
    res = cli(*run_args(src, f"chdb:{db}", tmp_path / "ledger.json"))
    assert res.returncode == 0, res.stderr
    assert_table_equals(chdb_table(db), expected_rows(src, [0, 1]))
    # 2 shards × 4 segments (1000, 1000, 1000, 300 rows) in 250-row blocks: 8 parts, not 28
    assert inserted_parts(chdb_rows(db, PARTS_SQL.format(db="default"))) == 8


@pytest.mark.server
def test_server_one_segment_is_one_part(make_shards: Any, server: Any, server_db: str, tmp_path: Path) -> None:
    src = make_shards([0, 1], rows=3300, dim=DIM)
    res = cli(*run_args(src, server.http_url, tmp_path / "ledger.json", "--database", server_db))
    assert res.returncode == 0, res.stderr
    assert_table_equals(server_table(server, server_db), expected_rows(src, [0, 1]))
    import json

    raw = server.query(PARTS_SQL.format(db=server_db) + " FORMAT JSONEachRow")
    assert inserted_parts([json.loads(raw.splitlines()[0])]) == 8


@pytest.mark.server
def test_a_segment_is_one_part_whatever_it_weighs(server: Any, server_db: str) -> None:
    """We send min_insert_block_size_bytes = 0 ("takes no part"): only the segment's rows close the squashed
    block, so a segment heavier than the estimate that sized it is still one part. The control sends a byte
    threshold that every block passes and gets a part per block."""
    import json
    import urllib.request

    ref = TableRef(server_db, "laion")
    server.query(create_table_sql(ref, None))
    ours = insert_settings(info_of(server), None, Squash(rows=4 * BLOCK))
    assert ours["min_insert_block_size_bytes"] == 0

    def parts_after(settings: dict[str, str | int], first_id: int) -> int:
        req = build_request(server.http_url, Credentials(), server_db, insert_sql(ref, "native"), settings, insert=True)
        body = b"".join(bytes(p) for i in range(4) for p in encode_native(block(first_id + i * BLOCK)))
        with urllib.request.urlopen(urllib.request.Request(req.url, body, req.headers, method="POST"), timeout=60):
            pass
        raw = server.query(PARTS_SQL.format(db=server_db) + " FORMAT JSONEachRow")
        return inserted_parts([json.loads(raw.splitlines()[0])])

    assert parts_after(ours, 0) == 1
    assert parts_after({**ours, "min_insert_block_size_bytes": 1}, STRIDE) == 1 + 4
    assert _count(server, server_db, 0, 2 * STRIDE) == 8 * BLOCK


def _post_chunked_then_cut(
    server: Any, db: str, squash_rows: int, blocks: list[pa.RecordBatch], keep_last: float = 0.5
) -> None:
    """POST the blocks as one chunked Native body, stop `keep_last` of the way through the last one (0: right
    after the block before it) and drop the connection."""
    ref = TableRef(db, "laion")
    settings = insert_settings(info_of(server), None, Squash(rows=squash_rows))
    req = build_request(server.http_url, Credentials(), db, insert_sql(ref, "native"), settings, insert=True)
    path = req.url.split(str(server.http_port), 1)[1]
    bodies = [b"".join(bytes(p) for p in encode_native(b)) for b in blocks]
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-ClickHouse-User: default\r\n"
            "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        for body in bodies[:-1]:
            sock.sendall(f"{len(body):x}\r\n".encode() + body + b"\r\n")
        last = bodies[-1][: int(len(bodies[-1]) * keep_last)]
        if last:
            sock.sendall(f"{len(bodies[-1]):x}\r\n".encode() + last)
        time.sleep(0.5)  # the server has read and parsed the whole blocks before the cut
        sock.shutdown(socket.SHUT_RDWR)


def _count(server: Any, db: str, lo: int, hi: int) -> int:
    return int(server.query(f"SELECT count() FROM {db}.laion WHERE id BETWEEN {lo} AND {hi}"))


@pytest.mark.server
def test_a_segment_cut_mid_body_commits_nothing(server: Any, server_db: str) -> None:
    server.query(create_table_sql(TableRef(server_db, "laion"), None))
    seg = [block(i * BLOCK) for i in range(4)]  # one segment of 4 blocks, cut in the 4th
    _post_chunked_then_cut(server, server_db, 4 * BLOCK, seg)
    # control, same body into another id range: squashing only to one block, the blocks before the cut commit
    ctl = [block(STRIDE + i * BLOCK) for i in range(4)]
    _post_chunked_then_cut(server, server_db, BLOCK, ctl)
    deadline = time.monotonic() + 10
    want = 3 * BLOCK if server_version(server) == "18.16" else BLOCK
    while _count(server, server_db, STRIDE, 2 * STRIDE) < want and time.monotonic() < deadline:
        time.sleep(0.1)
    control = _count(server, server_db, STRIDE, 2 * STRIDE)
    # the control shows what a cut leaves: 18.16 commits every block before it; 26.9 (its insert pipeline
    # cancelled by the cut) commits fewer, but at least the first: the cut did come after whole blocks
    if server_version(server) == "18.16":
        assert control == 3 * BLOCK
    else:
        assert control % BLOCK == 0 and BLOCK <= control <= 3 * BLOCK, control
    assert _count(server, server_db, 0, STRIDE - 1) == 0


@pytest.mark.server
def test_a_body_ending_between_blocks_looks_complete_to_18_16_not_to_26_9(server: Any, server_db: str) -> None:
    """Why the HTTP sink never lets a piece of its body end on a block boundary (see HttpSink._body): 18.16 takes
    a chunked body cut right after a block for a complete one and commits it. 26.9 refuses a chunked body that
    lacks its last chunk (the seam costs it nothing)."""
    server.query(create_table_sql(TableRef(server_db, "laion"), None))
    _post_chunked_then_cut(server, server_db, 4 * BLOCK, [block(i * BLOCK) for i in range(4)], keep_last=0.0)
    if server_version(server) == "26.9":
        time.sleep(1.0)
        assert _count(server, server_db, 0, STRIDE) == 0
        return
    deadline = time.monotonic() + 10
    while _count(server, server_db, 0, STRIDE) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _count(server, server_db, 0, STRIDE) == 3 * BLOCK


@pytest.mark.server
def test_a_segment_whose_source_fails_midway_lands_nothing_and_names_the_cause(server: Any, server_db: str) -> None:
    """Our sink's own stream (chunked body, our squash settings): the reader fails after 3 of 4 blocks."""
    ref = TableRef(server_db, "laion")
    seg = plan_segments(0, 4 * BLOCK, 4 * BLOCK, BLOCK, dim=DIM)[0]

    async def blocks() -> AsyncIterator[pa.RecordBatch]:
        for i in range(3):
            yield block(i * BLOCK)
            await asyncio.sleep(0.2)
        raise OSError("disk vanished")

    async def go() -> int:
        cfg = TargetConfig(spec=parse_target(server.http_url), database=server_db)
        sink = HttpSink(cfg)
        try:
            await sink.connect()
            await sink.ensure_table(ref)
            with pytest.raises(OSError, match="disk vanished"):
                await sink.insert(ref, seg, blocks(), None)
            await asyncio.sleep(1.0)
            return await sink.count_range(ref, seg.first_id, seg.last_id)
        finally:
            await sink.close()

    assert asyncio.run(go()) == 0


@pytest.mark.parametrize("fmt", ["native", "rowbinary"])
@pytest.mark.parametrize("sizes", [[BLOCK] * 4, [3, 1, 700, 2, 1], [1]])
def test_no_body_piece_ends_on_a_block_boundary(fmt: str, sizes: list[int]) -> None:
    """A cut between pieces always leaves a truncated block: the body, joined, is the blocks' encoding in order."""
    from ingest.clickhouse.wire import encode

    batches, first = [], 0
    for n in sizes:
        batches.append(block(first, n))
        first += n
    encoded = [b"".join(bytes(p) for p in encode(b, fmt)) for b in batches]  # type: ignore[arg-type]
    boundaries = set(np.cumsum([len(e) for e in encoded])[:-1].tolist())

    async def go() -> list[bytes]:
        sink = HttpSink(TargetConfig(spec=parse_target("http://127.0.0.1:9"), insert_format=fmt))  # type: ignore[arg-type]

        async def source() -> AsyncIterator[pa.RecordBatch]:
            for b in batches:
                yield b

        try:
            return [bytes(p) async for p in sink._body(TableRef("d", "t"), source())]
        finally:
            await sink.close()

    pieces = asyncio.run(go())
    assert b"".join(pieces) == b"".join(encoded)
    ends = set(np.cumsum([len(p) for p in pieces]).tolist())
    assert not ends & boundaries


# -- the embedded engine: a segment streamed through a pipe, and merges deferred during a run -----------------


def _chdb_sink(tmp_path: Path, merges: str = "deferred") -> tuple[ChdbSink, TableRef]:
    cfg = TargetConfig(spec=parse_target(f"chdb:{tmp_path / 'db'}"), merges=merges, schema=TableSchema(DIM))  # type: ignore[arg-type]
    return ChdbSink(cfg), TableRef("default", "laion")


def test_chdb_segment_whose_source_fails_midway_lands_nothing_and_names_the_cause(tmp_path: Path) -> None:
    seg = plan_segments(0, 4 * BLOCK, 4 * BLOCK, BLOCK, dim=DIM)[0]

    async def blocks() -> AsyncIterator[pa.RecordBatch]:
        for i in range(3):  # whole blocks, then the source dies: a pipe closed here would look complete
            yield block(i * BLOCK)
        raise OSError("disk vanished")

    async def go() -> tuple[int, int]:
        sink, ref = _chdb_sink(tmp_path)
        try:
            await sink.connect()
            await sink.ensure_table(ref)
            with pytest.raises(OSError, match="disk vanished"):
                await sink.insert(ref, seg, blocks(), None)
            lost = await sink.count_range(ref, seg.first_id, seg.last_id)
            await sink.insert(ref, seg, _blocks(4), None)  # the sink is usable after the failure
            return lost, await sink.count_range(ref, seg.first_id, seg.last_id)
        finally:
            await sink.close()

    assert asyncio.run(go()) == (0, 4 * BLOCK)


async def _blocks(n: int, pause: float = 0.0) -> AsyncIterator[pa.RecordBatch]:
    for i in range(n):
        yield block(i * BLOCK)
        await asyncio.sleep(pause)


def test_chdb_segment_cancelled_midway_lands_nothing(tmp_path: Path) -> None:
    seg = plan_segments(0, 4 * BLOCK, 4 * BLOCK, BLOCK, dim=DIM)[0]

    async def go() -> int:
        sink, ref = _chdb_sink(tmp_path)
        try:
            await sink.connect()
            await sink.ensure_table(ref)
            task = asyncio.create_task(sink.insert(ref, seg, _blocks(4, pause=0.3), None))
            await asyncio.sleep(0.5)  # two whole blocks are in the pipe
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return await sink.count_range(ref, seg.first_id, seg.last_id)
        finally:
            await sink.close()

    assert asyncio.run(go()) == 0


def test_chdb_insert_refused_before_reading_says_why_and_does_not_hang(tmp_path: Path) -> None:
    seg = plan_segments(0, BLOCK, BLOCK, BLOCK, dim=DIM)[0]

    async def go() -> None:
        sink, _ = _chdb_sink(tmp_path, merges="during")
        try:
            await sink.connect()
            with pytest.raises(TargetError, match=r"UNKNOWN_TABLE|does not exist"):
                await asyncio.wait_for(sink.insert(TableRef("default", "missing"), seg, _blocks(1), None), 30)
        finally:
            await sink.close()

    asyncio.run(go())


def test_chdb_deferred_merges_wait_for_the_end_of_the_run(tmp_path: Path) -> None:
    """While a run loads, the table does not merge (OPTIMIZE is refused); deletes of a torn range still run; past
    the part bound merges resume; after close a new session merges (`index` can OPTIMIZE)."""
    segs = plan_segments(0, 4 * BLOCK, BLOCK, BLOCK, dim=DIM)

    async def go() -> tuple[str, str, int]:
        sink, ref = _chdb_sink(tmp_path)
        assert sink.merge_hold is not None
        sink.merge_hold.limit = 3
        try:
            await sink.connect()
            await sink.ensure_table(ref)
            for seg in segs[:2]:
                await sink.insert(ref, seg, (b async for b in _one(seg.start)), None)
            with pytest.raises(TargetError) as refused:
                await sink.execute(f"OPTIMIZE TABLE {ref.sql} FINAL")
            await sink.delete_range(ref, segs[1].first_id, segs[1].last_id)  # a mutation runs, then the stop again
            for seg in segs[1:]:  # segment 1 again, under a token: same rows, so the window would dedup it
                await sink.insert(ref, seg, (b async for b in _one(seg.start)), f"again-{seg.index}")
            await sink.insert(ref, segs[0], _blocks(0), None)  # 4 parts > 3: merges resume
            await sink.execute(f"OPTIMIZE TABLE {ref.sql} FINAL")
            return (
                str(refused.value),
                "optimized",
                int((await sink.query(f"SELECT count() AS n FROM {ref.sql}"))[0]["n"]),
            )
        finally:
            await sink.close()

    refused, optimized, rows = asyncio.run(go())
    assert "ABORTED" in refused or "Cancelled merging" in refused
    assert (optimized, rows) == ("optimized", 4 * BLOCK)


async def _one(first: int) -> AsyncIterator[pa.RecordBatch]:
    yield block(first)


def test_a_window_is_handed_out_again_only_once_nothing_refers_to_it() -> None:
    """The pool behind the HTTP Native reader's windows: a buffer an Arrow array or a view (a body chunk on its
    way) still refers to is never handed out again; once released it is the one handed out next."""
    pool = WindowPool()
    first = pool.take(4, 3)
    at = first.ctypes.data
    run = vectors(first[:2])  # what the reader yields: an Arrow array over the buffer's first rows
    chunk = memoryview(first).cast("B")[8:16]  # what the transport may still hold
    del first
    second = pool.take(4, 3)
    assert second.ctypes.data != at
    del run
    third = pool.take(4, 3)  # the chunk still refers to the first buffer, `second` is held here
    assert third.ctypes.data not in (at, second.ctypes.data)
    chunk.release()
    del chunk
    assert pool.take(4, 3).ctypes.data == at  # nothing refers to the first buffer any more
    narrow = pool.take(4, 3, np.dtype(np.float16))
    assert narrow.dtype == np.float16 and narrow.ctypes.data not in (at, second.ctypes.data, third.ctypes.data)
