"""The HTTP target without a server: the requests it builds (the statement in the URL, credentials only in headers,
settings gated by version), how it maps server errors to our tree in one line, TLS, and a connection cut mid-insert
(uncertain) or mid-query (transient) by a loopback socket that hangs up."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sink_batches import insert_one, sink_settings, small_batch

from ingest.clickhouse.http_request import build_request, insert_sql, server_error
from ingest.clickhouse.replies import one_line
from ingest.core.config import Credentials
from ingest.core.errors import AuthError, ConfigError, TargetError, TransientTargetError, UncertainInsertError
from ingest.core.ids import TableRef
from ingest.sinks.base import server_info
from ingest.sinks.http import HttpSink, insert_settings, ssl_context


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
        asyncio.run(insert(port))
    with rude_server(read_bytes=0) as port:
        asyncio.run(query(port))
