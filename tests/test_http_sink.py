"""The HTTP target against each real loopback server (18.16, 26.9): the sink's methods, then the CLI end to end."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pytest
from cli_run import cli
from exact import assert_table_equals, expected_rows, server_table
from server_fixtures import ServerHandle, free_ports, server_version

from ingest.clickhouse.http_request import build_request, insert_sql, server_error
from ingest.clickhouse.replies import one_line
from ingest.core.config import Credentials, TargetConfig
from ingest.core.errors import (
    AuthError,
    ConfigError,
    SchemaMismatchError,
    TargetError,
    TransientTargetError,
    UncertainInsertError,
    UsageError,
)
from ingest.core.ids import TableRef
from ingest.core.plan import SegmentPlan
from ingest.core.target import parse_target
from ingest.sinks.base import ServerInfo, server_info
from ingest.sinks.http import HttpSink, insert_settings, ssl_context
from ingest.stages.batch import batch_schema

T = TypeVar("T")
STRIDE = 10_000_000


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def sink_settings(url: str, db: str, *, user: str = "default", password: str = "", fmt: str = "native") -> TargetConfig:
    return TargetConfig(
        spec=parse_target(url),
        database=db,
        credentials=Credentials(user, password),
        insert_format=fmt,  # type: ignore[arg-type]
    )


async def _blocks(*batches: pa.RecordBatch) -> AsyncIterator[pa.RecordBatch]:
    for b in batches:
        yield b


async def insert_one(sink: HttpSink, ref: TableRef, batch: pa.RecordBatch, token: str | None) -> None:
    """Insert one batch as a one-block segment (its ids from the batch, its place from its first id)."""
    first = int(batch.column(0)[0].as_py()) if batch.num_rows else 0
    shard, start = divmod(first, STRIDE)
    seg = SegmentPlan(shard, 0, start, start + max(1, batch.num_rows), max(1, batch.num_rows), max(1, batch.num_rows))
    await sink.insert(ref, seg, _blocks(batch), token)


def small_batch(first_id: int, n: int, dim: int = 512) -> pa.RecordBatch:
    rng = np.random.default_rng(first_id)

    def vec() -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=n * dim).astype(np.float32)), dim)

    return pa.RecordBatch.from_arrays(
        [
            pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
            pa.array([f"https://x/{i}" for i in range(n)]),
            pa.array([f"caption '{i}'\t\"é\"" for i in range(n)]),
            pa.array(["UNLIKELY"] * n),
            pa.array(rng.random(n).astype(np.float32)),
            vec(),
            vec(),
        ],
        schema=batch_schema(dim),
    )


# -- request building and error mapping (pure) ----------------------------------------------------------------


def test_insert_request_carries_statement_in_url_and_credentials_only_in_headers() -> None:
    creds = Credentials("ingest", "s3cr&t pw")
    ref = TableRef("db1", "laion")
    req = build_request(
        "http://127.0.0.1:8123",
        creds,
        ref.database,
        insert_sql(ref, "native"),
        insert_settings(server_info("24.3.1"), "tok:1"),
        insert=True,
    )
    assert req.url == (
        "http://127.0.0.1:8123/?query=INSERT%20INTO%20%60db1%60.%60laion%60%20FORMAT%20Native"
        "&database=db1&wait_end_of_query=1&async_insert=0&insert_deduplication_token=tok%3A1"
    )
    assert req.body is None
    assert req.headers["X-ClickHouse-User"] == "ingest"
    assert req.headers["X-ClickHouse-Key"] == "s3cr&t pw"
    assert "s3cr" not in req.url and "ingest" not in req.url and "s3cr" not in repr(req)


def test_query_request_sends_sql_as_body_and_gates_the_dedup_token() -> None:
    req = build_request("https://h:8443", Credentials(), "d", "SELECT 1", {"max_threads": 2})
    assert req.url == "https://h:8443/?database=d&wait_end_of_query=1&max_threads=2"
    assert req.body == b"SELECT 1"
    assert "X-ClickHouse-Key" not in req.headers  # empty password: no key header at all
    assert insert_settings(server_info("18.16.1"), "tok") == {}  # 18.16 refuses the unknown setting
    assert insert_settings(server_info("24.3.1"), None) == {"async_insert": 0}
    assert insert_settings(server_info("21.10.1"), None) == {}
    assert insert_sql(TableRef("a", "b"), "rowbinary") == "INSERT INTO `a`.`b` FORMAT RowBinary"
    with pytest.raises(ValueError):
        build_request("http://h:1", Credentials(), "d", "SELECT 1", {"x=1&readonly": 0})


def test_server_errors_map_to_the_tree_as_one_line() -> None:
    body_1816 = "Code: 60, e.displayText() = DB::Exception: Table d.t doesn't exist., e.what() = DB::Exception\n"
    err = server_error(404, None, body_1816, "u", "h:1")
    assert type(err) is TargetError and err.code == 60 and not err.retriable
    assert str(err) == "ClickHouse at h:1: Code: 60, DB::Exception: Table d.t doesn't exist."
    modern = "Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS)\nStack trace:\n0. x\n"
    err = server_error(500, "252", modern, "u", "h:1")
    assert isinstance(err, TransientTargetError) and err.retriable and "\n" not in str(err)
    auth = server_error(401, None, "Code: 193, e.displayText() = DB::Exception: Wrong password for user u", "u", "h:1")
    assert isinstance(auth, AuthError) and str(auth) == "authentication failed for user 'u' at h:1"
    assert isinstance(server_error(503, None, "", "u", "h:1"), TransientTargetError)
    assert len(one_line("x" * 5000)) <= 300


def test_tls_verifies_by_default_and_skips_checks_only_when_asked(tmp_path: Path) -> None:
    assert ssl_context(sink_settings("http://h:8123", "d")) is None
    verified = ssl_context(sink_settings("https://h:8443", "d"))
    assert verified is not None and verified.verify_mode == ssl.CERT_REQUIRED and verified.check_hostname
    insecure = ssl_context(replace(sink_settings("https://h:8443", "d"), insecure=True))
    assert insecure is not None and insecure.verify_mode == ssl.CERT_NONE and not insecure.check_hostname
    with pytest.raises(ConfigError, match="cannot use --ca-file"):
        ssl_context(replace(sink_settings("https://h:8443", "d"), ca_file=tmp_path / "missing.pem"))


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


@contextlib.contextmanager
def rude_server(read_bytes: int) -> Iterator[int]:
    """A loopback socket that reads the request head and `read_bytes` of body, then hangs up without replying."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                got = b""
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    while b"\r\n\r\n" not in got or len(got) < got.find(b"\r\n\r\n") + 4 + read_bytes:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        got += chunk
                    conn.shutdown(socket.SHUT_RDWR)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


def test_a_connection_cut_mid_insert_is_uncertain_and_a_cut_query_transient() -> None:
    async def insert(port: int) -> None:
        sink = HttpSink(sink_settings(f"http://127.0.0.1:{port}", "db"))
        sink.info = server_info("18.16.1")
        try:
            with pytest.raises(UncertainInsertError, match=r"insert into ClickHouse at 127\.0\.0\.1") as info:
                await insert_one(sink, TableRef("db", "laion"), small_batch(0, 2000), None)
            assert info.value.retriable
        finally:
            await sink.close()

    async def query(port: int) -> None:
        sink = HttpSink(sink_settings(f"http://127.0.0.1:{port}", "db"))
        try:
            with pytest.raises(TransientTargetError, match="connection lost") as info:
                await sink.query("SELECT 1")
            assert not isinstance(info.value, UncertainInsertError)
        finally:
            await sink.close()

    with rude_server(read_bytes=100_000) as port:
        run(insert(port))
    with rude_server(read_bytes=0) as port:
        run(query(port))


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
    assert set(ids // STRIDE) == {0, 1, 2} and (ids % STRIDE).max() == 4999

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
