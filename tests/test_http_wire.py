"""What goes over the wire to each real server (18.16 and 26.9), read from a loopback capture: the dedup token of
a segment and what a re-sent one does, `async_insert=0` to a server whose default is on, a reply lost after the
server committed an insert; and what a read-only user may do."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from cli_run import cli
from exact import assert_table_equals, expected_rows, server_table
from http_capture import Capture
from server_fixtures import NO_ASYNC_INSERT_1816, NO_DEDUP_TOKEN_1816, server_version, servers_with
from sink_batches import sink_settings, small_batch

from ingest.core.ids import TableRef
from ingest.core.plan import SegmentPlan
from ingest.load.landing import fresh_token
from ingest.sinks.http import HttpSink

STRIDE = 10_000_000


def load_args(src: Path, url: str, db: str, ledger: Path, *extra: str) -> list[str]:
    return [
        "run", "--source", str(src), "--shards", "0-1", "--target", url, "--database", db, "--dim", "32",
        "--batch-rows", "250", "--segment-rows", "500", "--no-progress", "--state", str(ledger), *extra,
    ]  # fmt: skip


def creds(server: Any) -> dict[str, str]:
    return {"CLICKHOUSE_USER": "ingest", "CLICKHOUSE_PASSWORD": server.password}


async def _one(batch: Any) -> Any:
    yield batch


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.server
@pytest.mark.parametrize("server", servers_with({"18.16": NO_DEDUP_TOKEN_1816}), indirect=True)
def test_a_segment_resent_with_its_token_is_a_no_op_and_a_fresh_token_lands(server: Any, server_db: str) -> None:
    """The landing's promise on a server with tokens: re-sending a segment that did land (same token) adds nothing;
    the token, not the ids, decides (a fresh token lands the same rows again)."""
    ref = TableRef(server_db, "laion")
    seg = SegmentPlan(0, 0, 0, 300, 300, 300)
    token = seg.token(ref.key)
    batch = small_batch(0, 300)

    async def go() -> list[int]:
        sink = HttpSink(sink_settings(server.http_url, server_db, user="ingest", password=server.password))
        counts = []
        try:
            await sink.connect()
            await sink.ensure_table(ref)
            for tok in (token, token, token, fresh_token(token)):
                await sink.insert(ref, seg, _one(batch), tok)
                counts.append(await sink.count_range(ref, 0, STRIDE))
        finally:
            await sink.close()
        return counts

    assert run(go()) == [300, 300, 300, 600]


@pytest.mark.server
def test_a_reply_lost_after_the_commit_is_retried_and_lands_once(
    make_shards: Any, server: Any, server_db: str, tmp_path: Path
) -> None:
    """The relay hangs up on two inserts after the server committed them: the run says it retries, counts the
    segments' ranges, finds them whole and sends nothing twice. Every insert carries its segment's token where
    the server has tokens, none on 18.16."""
    src = make_shards([0, 1], rows=2000, dim=32)
    with Capture(server.http_port, drop_insert_replies=2) as cap:
        res = cli(*load_args(src, cap.url, server_db, tmp_path / "l.json"), env=creds(server))
        inserts = cap.inserts()
    assert res.returncode == 0, res.stderr
    assert cap.dropped == 2 and "retry" in res.stderr and "Traceback" not in res.stderr
    assert_table_equals(server_table(server, server_db), expected_rows(src, [0, 1]))
    assert len(inserts) == 8  # 2 shards x 4 segments of 500 rows: the two lost replies were not re-sent
    tokens = [r.params.get("insert_deduplication_token") for r in inserts]
    if server_version(server) == "18.16":
        assert tokens == [None] * 8
    else:
        want = {f"laion-ingest:{server_db}.laion:s{s}:g500x250:i{i}" for s in (0, 1) for i in range(4)}
        assert set(tokens) == want, tokens


@pytest.mark.server
@pytest.mark.parametrize("server", servers_with({"18.16": NO_ASYNC_INSERT_1816}), indirect=True)
def test_inserts_are_synchronous_on_a_server_whose_default_is_async(
    make_shards: Any, server: Any, server_db: str, tmp_path: Path
) -> None:
    """26.9 turns async_insert on by default: we send async_insert=0 and wait_end_of_query=1 with every insert,
    so an acknowledged segment is in the table (checked the moment the run returns). chdb's server accepts
    async_insert but has no queue (DESIGN.md §3c): the header is what is checked here, the rows are checked too."""
    assert server.query("SELECT value FROM system.settings WHERE name = 'async_insert'") == b"1\n"
    src = make_shards([0, 1], rows=1000, dim=32)
    with Capture(server.http_port) as cap:
        res = cli(*load_args(src, cap.url, server_db, tmp_path / "l.json"), env=creds(server))
        inserts = cap.inserts()
    assert res.returncode == 0, res.stderr
    assert server.query(f"SELECT count() FROM {server_db}.laion") == b"2000\n"
    assert len(inserts) == 4
    for r in inserts:
        assert r.params["async_insert"] == "0" and r.params["wait_end_of_query"] == "1", r.target
        assert r.params["materialize_skip_indexes_on_insert"] == "0", r.target  # the load never pays for an index
        assert "x-clickhouse-key" in r.headers and server.password not in r.target


@pytest.mark.server
def test_a_read_only_user_is_refused_a_load_in_one_line_and_may_search(
    make_shards: Any, server: Any, server_db: str, tmp_path: Path
) -> None:
    """`reader` (readonly=2) cannot create or insert: exit 1 (not a transient failure to retry), one line naming
    the cause, no secret, nothing created. Where the server has vector search it may search with its settings."""
    src = make_shards([0, 1], rows=300, dim=32)
    reader = {"CLICKHOUSE_USER": "reader", "CLICKHOUSE_PASSWORD": server.reader_password}
    res = cli(*load_args(src, server.http_url, server_db, tmp_path / "l.json"), env=reader)
    assert res.returncode == 1, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "readonly" in errors[0].lower() and "Code: 164" in errors[0], res.stderr
    assert "Traceback" not in res.stderr and server.reader_password not in res.stderr + res.stdout
    assert server.query(f"EXISTS TABLE {server_db}.laion") == b"0\n"
    ok = cli(*load_args(src, server.http_url, server_db, tmp_path / "l.json"), env=creds(server))
    assert ok.returncode == 0, ok.stderr
    if server_version(server) == "26.9":
        found = cli(
            "search", "--target", server.http_url, "--database", server_db, "--like-id", "10000005", "--brute-force",
            "--limit", "3", "--json", env=reader,
        )  # fmt: skip
        assert found.returncode == 0, found.stderr
        assert orjson.loads(found.stdout)["hits"][0]["id"] == 10_000_005
