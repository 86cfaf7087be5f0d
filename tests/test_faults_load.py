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
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pyarrow as pa
from exact import assert_table_equals, expected_rows, parse_rowbinary, server_table
from hold_proxy import HoldProxy
from test_http_sink import sink_settings, small_batch

from ingest.core.ids import TableRef
from ingest.core.plan import SegmentPlan
from ingest.core.retry import RetryPolicy
from ingest.load.landing import Landing
from ingest.sinks.http import HttpSink

DIM = 16
HOLD_SECONDS = 4.0
"""How long the server is kept from finishing a dead run's INSERT while the rerun goes on."""


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


def load_args(
    src: Path, url: str, db: str, ledger: Path, shards: str = "0-1", segment_rows: int = 2000, *extra: str
) -> list[str]:
    """Segments of 2,000 rows (~2.2 MB bodies at dim 128: 18.16 registers an HTTP INSERT in system.processes only
    once it has read the first MiB of its body), in 500-row blocks; retries quick."""
    return ["run", "--source", str(src), "--shards", shards, "--target", url, "--database", db, "--dim", "128",
            "--batch-rows", "500", "--segment-rows", str(segment_rows), "--no-progress", "--state", str(ledger),
            "--max-retries", "30", "--retry-max-seconds", "1", *extra]  # fmt: skip


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ingest", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )


def kill_after_last_byte_then_rerun(args: list[str], proxy: HoldProxy, env: dict[str, str] | None = None) -> str:
    """Run until the proxy holds a whole INSERT body, kill -9 the run, rerun AT ONCE; the held INSERT reaches the
    server only HOLD_SECONDS later (or when the rerun ended): the rerun must neither count it missing nor send it
    again. Returns the rerun's stderr (it must exit 0)."""
    first = start(args, env)
    try:
        assert proxy.held.wait(90), "no INSERT body was held"
    finally:
        first.kill()
        first.communicate()
    rerun = start(args, env)
    with contextlib.suppress(subprocess.TimeoutExpired):
        rerun.wait(timeout=HOLD_SECONDS)
    proxy.release()
    assert proxy.answered.wait(60), "the server never answered the held INSERT"
    _out, err = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, err
    assert "Traceback" not in err
    return err


def test_ingester_killed_after_a_segments_last_byte_does_not_land_it_twice(
    make_shards: Any, server: Any, server_db: str, tmp_path: Path
) -> None:
    src = make_shards([0, 1], rows=6000, dim=128)
    proxy = HoldProxy(server.http_port, hold=2)
    try:
        kill_after_last_byte_then_rerun(load_args(src, proxy.url, server_db, tmp_path / "ledger.json"), proxy)
    finally:
        proxy.close()
    assert_table_equals(server_table(server, server_db), expected_rows(src, [0, 1]))
