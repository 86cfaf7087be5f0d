"""Issue #19's two bugs, reproduced against real servers, with the machine loaded as shared nodes are.

1. A server killed mid-segment while the insert's body writer (aiohttp's task) was suspended inside the segment's
   block generator: the landing closed the generator under it ("aclose(): asynchronous generator is already
   running", exit 1). Reproduced deterministically (the block source parks mid-body when the server dies) and as
   the issue found it (kill -9 + restart under busy cores, through the CLI).
2. An ingester killed after a segment's last byte was sent, before the server answered: the next run counted the
   range while the dead run's INSERT was still running on the server, saw 0 rows and sent it again. Reproduced
   deterministically with a loopback proxy (tests/hold_proxy.py) that holds the end of one INSERT's body.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator
from typing import Any

import pyarrow as pa
from exact import parse_rowbinary
from test_http_sink import sink_settings, small_batch

from ingest.core.ids import TableRef
from ingest.core.plan import SegmentPlan
from ingest.core.retry import RetryPolicy
from ingest.load.landing import Landing
from ingest.sinks.http import HttpSink

DIM = 16


def table_ids(handle: Any, db: str, table: str = "laion") -> list[int]:
    raw = handle.query(f"SELECT id FROM {db}.{table} ORDER BY id FORMAT TSV")
    return [int(x) for x in raw.decode().split()]


def test_server_killed_while_the_body_writer_is_inside_the_block_source(server: Any, server_db: str) -> None:
    """The body writer is parked inside the block generator (a slow read) when the server dies: the insert must
    stop iterating before the generator is closed, the landing retries once the server is back, rows exact."""
    ref = TableRef(server_db, "laion")
    blocks = [small_batch(i * 100, 100, DIM) for i in range(4)]
    segment = SegmentPlan(0, 0, 0, 400, 100, 400)
    attempts = {"n": 0}
    parked = threading.Event()

    async def open_blocks() -> AsyncGenerator[pa.RecordBatch, None]:
        attempts["n"] += 1
        first = attempts["n"] == 1
        for i, block in enumerate(blocks):
            if first and i == 2:
                parked.set()
                await asyncio.sleep(60)  # a read that takes long: the server dies meanwhile
            yield block

    def kill_and_restart() -> None:
        parked.wait(30)
        server.kill()
        time.sleep(1.0)
        server.start()

    async def scenario() -> int:
        from dataclasses import replace

        from ingest.core.schema import TableSchema

        sink = HttpSink(replace(sink_settings(server.http_url, server_db), schema=TableSchema(DIM)))
        try:
            await sink.connect()
            await sink.ensure_table(ref)
            retry = RetryPolicy(max_retries=30, max_seconds=0.5, base_seconds=0.1)
            landing = Landing(sink, ref, retry, use_token=sink.info.dedup_token)
            return await landing.land(segment, 400, open_blocks)
        finally:
            await sink.close()

    killer = threading.Thread(target=kill_and_restart)
    killer.start()
    try:
        inserted = asyncio.run(asyncio.wait_for(scenario(), 90))
    finally:
        killer.join()
    assert inserted == 400 and attempts["n"] >= 2
    assert table_ids(server, server_db) == list(range(400))
    got = parse_rowbinary(server.query(f"SELECT * FROM {server_db}.laion ORDER BY id FORMAT RowBinary"))
    assert got.column("url").to_pylist() == [u for b in blocks for u in b.column(1).to_pylist()]


