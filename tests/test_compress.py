"""HTTP body compression: our ClickHouse block framing decoded back, the plan per server, loads into each server."""

from __future__ import annotations

import asyncio
import gzip
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from cli_run import cli
from exact import assert_table_equals, expected_rows, server_table
from http_capture import Capture
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from server_fixtures import server_version

from ingest.clickhouse.compress import (
    METHOD_ZSTD,
    BodyCodec,
    checksum,
    compressed_body,
    encode_body,
    frame,
    is_loopback,
    plan_compression,
    unframe,
)
from ingest.core.metrics import REGISTRY

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"

# -- the framing ----------------------------------------------------------------------------------------------


def test_a_frame_has_checksum_method_sizes_and_decodes_back() -> None:
    raw = b"LAION " * 10_000
    blob = frame(raw)
    method, size, raw_size = struct.unpack_from("<BII", blob, 16)
    assert method == METHOD_ZSTD == 0x90
    assert size == len(blob) - 16 and raw_size == len(raw)
    assert blob[:16] == checksum(blob[16:])
    assert zstandard.ZstdDecompressor().decompress(blob[25:]) == raw
    assert list(unframe(blob)) == [raw]


def test_a_flipped_bit_or_a_cut_is_detected() -> None:
    blob = bytearray(frame(bytes(range(256)) * 100))
    blob[30] ^= 1
    with pytest.raises(ValueError, match="checksum mismatch"):
        list(unframe(blob))
    with pytest.raises(ValueError, match="claims"):
        list(unframe(frame(b"x" * 1000)[:-1]))


def test_frames_are_cut_at_a_fixed_input_size_whatever_the_chunking() -> None:
    data = bytes(range(256)) * 20_000  # 5 MiB: five full 1 MiB frames and a tail
    codec = plan_compression("zstd", (18, 16, 1), loopback=False)
    one = b"".join(encode_body([data], codec))
    pieces = b"".join(encode_body([data[i : i + 7777] for i in range(0, len(data), 7777)], codec))
    assert one == pieces  # deterministic: the counted bytes do not depend on how the body was sliced
    blocks = list(unframe(one))
    assert [len(b) for b in blocks] == [1 << 20] * 4 + [len(data) - 4 * (1 << 20)]
    assert b"".join(blocks) == data


@settings(max_examples=40, deadline=None)
@given(
    chunks=st.lists(st.binary(max_size=3000), max_size=12),
    method=st.sampled_from(["zstd-old", "zstd-new", "gzip", "none"]),
)
def test_any_body_round_trips_through_every_encoding(chunks: list[bytes], method: str) -> None:
    if method == "zstd-old":
        codec = plan_compression("zstd", (18, 16), loopback=False)
    elif method == "zstd-new":
        codec = plan_compression("zstd", (24, 8), loopback=False)
    else:
        codec = plan_compression(method, (18, 16), loopback=False)  # type: ignore[arg-type]
    wire = b"".join(encode_body(chunks, codec))
    data = b"".join(chunks)
    if codec.encoding == "frames":
        assert b"".join(unframe(wire)) == data
    elif codec.encoding == "zstd-stream":
        assert zstandard.ZstdDecompressor().decompressobj().decompress(wire) == data
    elif codec.encoding == "gzip":
        assert gzip.decompress(wire) == data
    else:
        assert wire == data


def test_the_plan_per_method_server_and_network() -> None:
    old, new = (18, 16, 1), (24, 8, 1)
    assert plan_compression("auto", old, loopback=True) == BodyCodec("none")
    assert plan_compression("auto", old, loopback=False) == BodyCodec("frames", params={"decompress": 1})
    assert plan_compression("zstd", old, loopback=True) == BodyCodec("frames", params={"decompress": 1})
    assert plan_compression("zstd", new, loopback=False) == BodyCodec("zstd-stream", {"Content-Encoding": "zstd"})
    assert plan_compression("zstd", (21, 1), loopback=False).encoding == "zstd-stream"
    assert plan_compression("zstd", (20, 12), loopback=False).encoding == "frames"
    assert plan_compression("gzip", old, loopback=False) == BodyCodec("gzip", {"Content-Encoding": "gzip"})
    assert plan_compression("none", new, loopback=False) == BodyCodec("none")


def test_loopback_is_decided_without_dns() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.0.0.2") and is_loopback("[::1]")
    assert is_loopback("localhost") and is_loopback("LOCALHOST")
    assert not is_loopback("10.0.0.1") and not is_loopback("clickhouse.example.com") and not is_loopback("")


def test_the_async_wrapper_counts_exactly_the_bytes_it_yields_and_runs_steps_through_offload() -> None:
    data = [memoryview(bytes([i % 7]) * 300_000) for i in range(8)]
    steps: list[int] = []

    async def body() -> AsyncIterator[memoryview]:
        for d in data:
            yield d

    async def offload(fn: Any) -> bytes:
        steps.append(1)
        return bytes(fn())

    async def collect(codec: BodyCodec) -> tuple[bytes, int]:
        counted: list[int] = []
        out = [bytes(c) async for c in compressed_body(body(), codec, counted.append, offload)]
        return b"".join(out), sum(counted)

    wire, counted = asyncio.run(collect(plan_compression("zstd", (18, 16), loopback=False)))
    assert counted == len(wire) and b"".join(unframe(wire)) == b"".join(bytes(d) for d in data)
    assert len(steps) == len(data) + 1  # each update and the finish went through offload
    steps.clear()
    plain, counted = asyncio.run(collect(BodyCodec("none")))
    assert plain == b"".join(bytes(d) for d in data) and counted == len(plain) and steps == []


# -- real loads into each loopback server (18.16 and 26.9), the wire read from a capture -----------------------


def load(src: Path, server: Any, db: str, table: str, tmp: Path, *extra: str, url: str = "") -> dict[str, Any]:
    report = tmp / f"{table}.report.json"
    res = cli(
        "run",
        "--source",
        str(src),
        "--shards",
        "0",
        "--target",
        url or server.http_url,
        "--database",
        db,
        "--table",
        table,
        "--no-progress",
        "--state",
        str(tmp / f"{table}.ledger.json"),
        "--report",
        str(report),
        *extra,
        env={"CLICKHOUSE_USER": "ingest", "CLICKHOUSE_PASSWORD": server.password},
    )
    assert res.returncode == 0, res.stderr
    doc: dict[str, Any] = json.loads(report.read_text())
    assert doc["rows_inserted"] == 20_000
    assert f"{doc['bytes_sent'] / 20_000:,.0f} bytes/row sent" in res.stdout
    return doc


@pytest.mark.server
def test_zstd_and_gzip_load_byte_exact_and_zstd_sends_far_fewer_bytes(
    make_shards: Any, server: Any, server_db: str, tmp_path: Path
) -> None:
    """`--compress zstd` is `Content-Encoding: zstd` (one zstd stream) to 26.9, ClickHouse's own framing with
    `decompress=1` to 18.16 (no zstd encoding before 21.1); gzip is a Content-Encoding on both."""
    src = make_shards([0], rows=20_000)
    want = expected_rows(src, [0])
    sent, wire = {}, {}
    for method in ("none", "zstd", "gzip", "auto"):
        table = f"laion_{method}"
        with Capture(server.http_port) as cap:
            doc = load(src, server, server_db, table, tmp_path, "--compress", method, url=cap.url)
            sent[method] = doc["bytes_sent"]
            wire[method] = cap.inserts()
        assert_table_equals(server_table(server, server_db, table), want)
        assert wire[method], method
    assert sent["none"] / sent["zstd"] >= 1.4, sent
    assert sent["none"] / sent["gzip"] >= 1.4, sent
    assert sent["auto"] == sent["none"]  # 127.0.0.1 is loopback: auto sends plain bodies
    for r in wire["zstd"]:
        if server_version(server) == "18.16":
            assert r.params.get("decompress") == "1" and "content-encoding" not in r.headers, r
            assert r.body_start[16] == METHOD_ZSTD  # a ClickHouse compressed block: checksum, then method byte
        else:
            assert r.headers.get("content-encoding") == "zstd" and "decompress" not in r.params, r
            assert r.body_start[:4] == ZSTD_MAGIC
    for r in wire["gzip"]:
        assert r.headers.get("content-encoding") == "gzip" and r.body_start[:2] == b"\x1f\x8b", r
    for r in wire["none"] + wire["auto"]:
        assert "content-encoding" not in r.headers and "decompress" not in r.params, r


@pytest.mark.server
def test_the_sink_counts_wire_bytes_into_the_metrics(server: Any, server_db: str) -> None:
    from dataclasses import replace

    from sink_batches import insert_one, sink_settings, small_batch

    from ingest.core.ids import TableRef
    from ingest.sinks.http import HttpSink

    async def go() -> int:
        sink = HttpSink(replace(sink_settings(server.http_url, server_db), compress="zstd"))
        try:
            await sink.connect()
            await sink.ensure_table(TableRef(server_db, "laion"))
            await insert_one(sink, TableRef(server_db, "laion"), small_batch(0, 3000), None)
            return sink.bytes_sent
        finally:
            await sink.close()

    before = REGISTRY.get_sample_value("laion_ingest_bytes_sent_total") or 0.0
    sent = asyncio.run(go())
    assert sent > 0
    assert REGISTRY.get_sample_value("laion_ingest_bytes_sent_total") == before + sent
    assert b"laion_ingest_bytes_sent_total" in generate_latest(REGISTRY)
    assert server.query(f"SELECT count() FROM {server_db}.laion").strip() == b"3000"
