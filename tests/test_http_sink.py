"""The HTTP target against each real loopback server (18.16, 26.9): the sink's methods, then the CLI end to end
(the requests it builds and how it reads failures: tests/test_http_request.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from cli_run import cli
from exact import assert_table_equals, expected_rows, server_table
from server_fixtures import ServerHandle, free_ports, server_version
from sink_batches import insert_one, sink_settings, small_batch

from ingest.core.errors import (
    SchemaMismatchError,
    TargetError,
    TransientTargetError,
    UsageError,
)
from ingest.core.ids import TableRef
from ingest.core.plan import ID_STRIDE
from ingest.sinks.base import ServerInfo
from ingest.sinks.http import HttpSink

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


# -- the sink against the real server -------------------------------------------------------------------------


@pytest.mark.server
def test_connect_detects_the_version_and_names_missing_features(server: Any, server_db: str) -> None:
    async def go() -> ServerInfo:
        sink = HttpSink(sink_settings(server.http_url, server_db, user="ingest", password=server.password))
        try:
            return await sink.connect()
        finally:
            await sink.close()

    info = run(go())
    if server_version(server) == "18.16":
        assert info.version.startswith("18.16")
        assert not (info.dedup_token or info.vector_index or info.cosine_distance or info.query_parameters)
        assert not info.async_insert
        assert info.missing == ["cosineDistance", "vector_similarity index", "insert_deduplication_token"]
    else:
        assert info.version.startswith("26.9")
        assert info.dedup_token and info.vector_index and info.cosine_distance and info.query_parameters
        assert info.async_insert and info.missing == []


@pytest.mark.server
def test_ensure_table_creates_is_idempotent_and_refuses_other_schemas(server: Any, server_db: str) -> None:
    server.query(f"CREATE TABLE {server_db}.other (id Int64, url String) ENGINE = MergeTree ORDER BY id")

    async def go() -> None:
        sink = HttpSink(sink_settings(server.http_url, server_db))
        try:
            await sink.connect()
            await sink.ensure_table(TableRef(server_db, "laion"))
            await sink.ensure_table(TableRef(server_db, "laion"))
            await sink.ensure_table(TableRef(f"{server_db}_new", "laion"))  # creates the database too
            with pytest.raises(SchemaMismatchError, match=r"other has columns \(id Int64, url String\)"):
                await sink.ensure_table(TableRef(server_db, "other"))
        finally:
            await sink.execute(f"DROP DATABASE IF EXISTS {server_db}_new")
            await sink.close()

    run(go())
    described = server.query(f"DESCRIBE TABLE {server_db}.laion").decode().splitlines()
    assert [line.split("\t")[:2] for line in described] == [
        ["id", "Int64"],
        ["url", "String"],
        ["caption", "String"],
        ["NSFW", "String"],
        ["similarity", "Float32"],
        ["image_embedding", "Array(Float32)"],
        ["text_embedding", "Array(Float32)"],
    ]


@pytest.mark.server
@pytest.mark.parametrize("fmt", ["native", "rowbinary"])
def test_insert_count_and_delete_range(server: Any, server_db: str, fmt: str) -> None:
    ref = TableRef(server_db, "laion")

    async def go() -> tuple[int, int, int, int]:
        sink = HttpSink(sink_settings(server.http_url, server_db, user="ingest", password=server.password, fmt=fmt))
        try:
            await sink.connect()
            await sink.ensure_table(ref)
            await asyncio.gather(*(insert_one(sink, ref, small_batch(i * 1000, 300), f"t{i}") for i in range(4)))
            await insert_one(sink, ref, small_batch(9000, 0), None)  # an empty batch is a no-op
            total = await sink.count_range(ref, 0, 10**6)
            part = await sink.count_range(ref, 1000, 1299)
            await sink.delete_range(ref, 1000, 1149)
            after = await sink.count_range(ref, 1000, 1299)
            rows = await sink.query(f"SELECT min(id) AS lo, max(id) AS hi FROM {ref.sql}")
            assert rows == [{"lo": 0, "hi": 3299}]  # Int64 as JSON numbers, not strings
            return total, part, after, await sink.count_range(ref, 0, 10**6)
        finally:
            await sink.close()

    assert run(go()) == (1200, 300, 150, 1050)
    got = server_table(server, server_db)
    batch = small_batch(3000, 300)
    assert got.column("caption").to_pylist()[-300:] == batch.column(2).to_pylist()
    assert np.asarray(got.column("image_embedding").to_pylist()[-1], np.float32).tobytes() == (
        batch.column(5).flatten().to_numpy()[-512:].tobytes()
    )


@pytest.mark.server
def test_server_errors_and_refused_connections_are_ours(server: Any, server_db: str) -> None:
    async def go() -> None:
        sink = HttpSink(sink_settings(server.http_url, server_db))
        try:
            await sink.connect()
            with pytest.raises(TargetError, match="Code: 60") as info:
                await insert_one(sink, TableRef(server_db, "missing"), small_batch(0, 3), None)
            assert not info.value.retriable and info.value.code == 60
            with pytest.raises(TargetError, match="Code: 62"):
                await sink.query("SELEC 1")
        finally:
            await sink.close()
        (port,) = free_ports(1)
        dead = HttpSink(sink_settings(f"http://127.0.0.1:{port}", server_db))
        try:
            with pytest.raises(TransientTargetError, match=f"cannot connect to ClickHouse at 127.0.0.1:{port}"):
                await dead.connect()
        finally:
            await dead.close()

    run(go())


# -- the CLI end to end ---------------------------------------------------------------------------------------


def run_args(src: Path, server: ServerHandle, db: str, state: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--source",
        str(src),
        "--shards",
        "0-2",
        "--target",
        server.http_url,
        "--database",
        db,
        "--table",
        "laion",
        "--no-progress",
        "--state",
        str(state),
        *extra,
    ]


@pytest.mark.server
@pytest.mark.parametrize("fmt", ["native", "rowbinary"])
def test_cli_loads_three_shards_byte_exact_and_never_twice(
    make_shards: Any, server: Any, server_db: str, tmp_path: Path, fmt: str
) -> None:
    src = make_shards([0, 1, 2], rows=5000)
    env = {"CLICKHOUSE_USER": "ingest", "CLICKHOUSE_PASSWORD": server.password}
    first = cli(*run_args(src, server, server_db, tmp_path / "a.json", "--format", fmt), env=env)
    assert first.returncode == 0, first.stderr
    assert "3 shards, 15,000 rows inserted" in first.stdout
    want = expected_rows(src, [0, 1, 2])
    got = server_table(server, server_db)
    assert_table_equals(got, want)
    ids = got.column("id").to_numpy()
    assert set(ids // ID_STRIDE) == {0, 1, 2} and (ids % ID_STRIDE).max() == 4999

    again = cli(*run_args(src, server, server_db, tmp_path / "a.json", "--format", fmt), env=env)
    assert again.returncode == 0, again.stderr
    fresh_ledger = cli(*run_args(src, server, server_db, tmp_path / "b.json", "--format", fmt), env=env)
    assert fresh_ledger.returncode == 0, fresh_ledger.stderr
    assert "15,000 rows already present" in fresh_ledger.stdout
    assert_table_equals(server_table(server, server_db), want)


@pytest.mark.server
def test_cli_password_from_env_or_file_and_a_wrong_one_fails_cleanly(
    make_shards: Any, server: Any, server_db: str, tmp_path: Path
) -> None:
    src = make_shards([0, 1, 2], rows=300)
    base = ["--user", "ingest"]
    by_env = cli(
        *run_args(src, server, server_db, tmp_path / "l1.json", *base), env={"CLICKHOUSE_PASSWORD": server.password}
    )
    assert by_env.returncode == 0, by_env.stderr

    pw_file = tmp_path / "pw"
    pw_file.write_text(server.password + "\n")
    by_file = cli(
        *run_args(src, server, f"{server_db}", tmp_path / "l2.json", *base, "--password-file", str(pw_file)),
        env={"CLICKHOUSE_PASSWORD": ""},
    )
    assert by_file.returncode == 0, by_file.stderr
    assert "900 rows already present" in by_file.stdout

    wrong = "not-" + server.password
    bad = cli(*run_args(src, server, server_db, tmp_path / "l3.json", *base), env={"CLICKHOUSE_PASSWORD": wrong})
    assert bad.returncode == 1
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert lines == [f"error: authentication failed for user 'ingest' at 127.0.0.1:{server.http_port}"]
    for text in (bad.stdout, bad.stderr):
        assert wrong not in text and server.password not in text and "Traceback" not in text
    assert server.query(f"SELECT count() FROM {server_db}.laion") == b"900\n"


@pytest.mark.server
def test_cli_refuses_an_injected_table_name_before_sending_anything(
    make_shards: Any, server: Any, server_db: str, tmp_path: Path
) -> None:
    server.query(f"CREATE TABLE {server_db}.y (id Int64) ENGINE = MergeTree ORDER BY id")
    src = make_shards([0], rows=10)
    res = cli(
        "run",
        "--source",
        str(src),
        "--shards",
        "0",
        "--target",
        server.http_url,
        "--database",
        server_db,
        "--table",
        "x; DROP TABLE y",
        "--no-progress",
        "--state",
        str(tmp_path / "l.json"),
    )
    assert res.returncode == 2
    assert "invalid table name 'x; DROP TABLE y'" in res.stderr and "Traceback" not in res.stderr
    with pytest.raises(UsageError):
        TableRef(server_db, "x; DROP TABLE y")
    assert server.query(f"EXISTS TABLE {server_db}.y") == b"1\n"
    assert server.query(f"SELECT count() FROM system.tables WHERE database = '{server_db}'") == b"1\n"
