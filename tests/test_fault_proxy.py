"""One fault at a time through the soak's fault proxy (tests/fault_proxy.py), each on a real 18.16 server: the
faults the soak found or depends on, made deterministic (one armed fault, offsets inside the first INSERT body)."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_run import cli
from exact import assert_table_equals, expected_rows, server_table
from fault_proxy import FaultProxy
from server_fixtures import ServerHandle
from sink_batches import sink_settings
from soak_driver import wait_until

from ingest.core.errors import TransientTargetError
from ingest.sinks.http import HttpSink

SHARDS = [0, 1]


@pytest.fixture
def proxy(ch_server: ServerHandle) -> Iterator[FaultProxy]:
    p = FaultProxy(ch_server.http_port, seed=19, body_span=20_000, stall_seconds=3.0)
    p.start()
    yield p
    p.stop()


def run(src: Path, proxy: FaultProxy, server: ServerHandle, db: str, tmp_path: Path, *extra: str) -> str:
    res = cli(
        "run", "--source", str(src), "--shards", "0-1", "--target", f"http://127.0.0.1:{proxy.port}",
        "--database", db, "--dim", "64", "--batch-rows", "250", "--segment-rows", "1000", "--no-progress",
        "--state", str(tmp_path / "ledger.json"), "--retry-max-seconds", "1", *extra,
        env={"CLICKHOUSE_USER": server.user, "CLICKHOUSE_PASSWORD": server.password},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    assert_table_equals(server_table(server, db), expected_rows(src, SHARDS))
    return res.stderr


@pytest.mark.parametrize(
    ("kind", "said", "extra"),
    [
        # the server sees a clean end of the body mid-block and says code 33: a cut, not bad data (was exit 1)
        ("half_close", "the insert body was cut on the way", ()),
        # nothing comes back for longer than --read-timeout: the insert is uncertain, reconciled, sent again
        ("stall", "timed out", ("--read-timeout", "1")),
        ("reset_body", "connection lost", ()),
        ("reset_response", "connection lost", ()),
        ("reply_242", "Table is in readonly mode", ()),
        ("reply_202", "Too many simultaneous queries", ()),
    ],
)
def test_one_fault_is_retried_and_the_table_is_exact(
    kind: str,
    said: str,
    extra: tuple[str, ...],
    proxy: FaultProxy,
    ch_server: ServerHandle,
    ch_db: str,
    make_shards: Callable[..., Path],
    tmp_path: Path,
) -> None:
    src = make_shards(SHARDS, rows=3000, dim=64)
    proxy.arm(kind)
    err = run(src, proxy, ch_server, ch_db, tmp_path, *extra)
    assert [f.kind for f in proxy.injected] == [kind]
    assert said in err and "; retry 1/" in err, err


def test_a_request_head_cut_by_a_half_close_is_retried(
    proxy: FaultProxy, ch_server: ServerHandle, ch_db: str, make_shards: Callable[..., Path], tmp_path: Path
) -> None:
    """A half-close inside an INSERT's request head: 18.16's HTTP layer answers 400 with no ClickHouse code (the soak,
    seed 190302 round 22, ended exit 1 so); it is a mangled request, retried, not a fatal error."""
    src = make_shards(SHARDS, rows=3000, dim=64)
    proxy.body_span = 150  # within the request line
    proxy.arm("half_close")
    err = run(src, proxy, ch_server, ch_db, tmp_path)
    assert [f.kind for f in proxy.injected] == ["half_close"]
    assert "HTTP 400; retry 1/" in err, err


def test_refused_connections_are_retried(
    proxy: FaultProxy, ch_server: ServerHandle, ch_db: str, make_shards: Callable[..., Path], tmp_path: Path
) -> None:
    """Mid-run the proxy drops its connections and refuses new ones for 1.5 s: reconnects are refused, retried, and
    the run ends exact."""
    src = make_shards(SHARDS, rows=3000, dim=64)
    proxy.refuse_seconds = 1.5

    def refuse_after_first_insert() -> None:
        assert wait_until(lambda: bool(proxy.insert_ok), 60, step=0.005)
        proxy.arm("refuse")

    t = threading.Thread(target=refuse_after_first_insert)
    t.start()
    err = run(src, proxy, ch_server, ch_db, tmp_path)
    t.join()
    assert [f.kind for f in proxy.injected] == ["refuse"]
    assert "cannot connect to ClickHouse" in err, err


def test_a_refused_connection_does_not_hide_an_insert_still_running(
    proxy: FaultProxy, ch_server: ServerHandle, ch_db: str
) -> None:
    """Behind a proxy or load balancer a refused connection says nothing about the server: an INSERT of ours may
    still run there. Waiting for it must fail (and the landing retry), not report it gone: the soak (seed 190300,
    18.16) saw a segment twice when a refusal window met an insert a timed-out attempt had left running."""
    qid = "soak-held-insert"
    ch_server.query(f"CREATE TABLE {ch_db}.t (x UInt8) ENGINE = MergeTree ORDER BY x")
    held = socket.create_connection(("127.0.0.1", ch_server.http_port))
    try:  # an INSERT whose chunked body never ends: it runs on the server until its connection goes
        query = f"INSERT INTO {ch_db}.t FORMAT TSV".replace(" ", "%20")
        rows = b"1\n" * 2_000_000  # 18.16 reads the first MBs of a body before the query shows in processes
        head = f"POST /?query_id={qid}&query={query} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        held.sendall(head.encode() + f"{len(rows):x}\r\n".encode() + rows + b"\r\n")
        sql = f"SELECT count() FROM system.processes WHERE query_id = '{qid}'"
        assert wait_until(lambda: ch_server.query(sql).strip() == b"1", 30)
        proxy.refuse_seconds = 10.0
        proxy.arm("refuse")
        assert wait_until(lambda: bool(proxy.injected), 5)

        async def wait_gone() -> None:
            sink = HttpSink(sink_settings(f"http://127.0.0.1:{proxy.port}", ch_db))
            try:
                await sink.wait_query_gone(qid)
            finally:
                await sink.close()

        with pytest.raises(TransientTargetError, match="cannot connect"):
            asyncio.run(wait_gone())
        assert ch_server.query(sql).strip() == b"1", "the INSERT was still running all along"
    finally:
        held.close()


def test_a_refusal_at_any_moment_strands_no_connection(proxy: FaultProxy) -> None:
    """Connections arriving as a refusal starts are each answered, reset or refused, never left open and unread:
    asyncio.start_server stranded those it had accepted just before it closed (Python 3.11), and a run whose query
    went to one waited its whole --read-timeout (tests/relay_listener.py)."""
    proxy.refuse_seconds = 0.05
    rng = random.Random(7)
    outcomes: Counter[str] = Counter()

    def ping() -> None:
        try:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as c:
                c.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
                outcomes["answered" if c.recv(100) else "closed"] += 1
        except TimeoutError:
            outcomes["stranded"] += 1
        except OSError:
            outcomes["refused or reset"] += 1

    for _ in range(40):
        clients = [threading.Thread(target=ping) for _ in range(6)]
        for t in clients:
            t.start()
        time.sleep(rng.random() * 0.003)  # the refusal meets the connects at a different point each round
        proxy.arm("refuse")
        for t in clients:
            t.join()
        time.sleep(0.1)  # the listener is back
    assert outcomes["stranded"] == 0, outcomes
    assert outcomes["answered"] and outcomes["refused or reset"], outcomes  # both sides of the race were met
