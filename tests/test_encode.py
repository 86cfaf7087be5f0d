"""The encoders against ClickHouse's own parsers: each loopback server (18.16, 26.9: HTTP INSERT), chdb (file()).

Read-back goes through `SELECT ... FORMAT RowBinary` decoded by a plain sequential reader written here, so the
comparison is exact: strings byte for byte, floats bit for bit (-0.0 and subnormals included).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_fixtures import SERVERS

from ingest.clickhouse.sql import COLUMNS, create_table_sql
from ingest.clickhouse.wire import (
    FORMAT_NAMES,
    clickhouse_type,
    encode,
    encode_native,
    encode_piece,
    encode_rowbinary,
    encodes_as_views,
    varint,
)
from ingest.core.arrays import vectors as vector_array
from ingest.core.ids import TableRef
from ingest.core.pieces import BlockStart, ColumnStart
from ingest.stages.batch import batch_schema

STRUCTURE = ", ".join(f"{name} {typ}" for name, typ in COLUMNS)

Row = tuple[int, bytes, bytes, bytes, int, bytes, bytes]
"""id, url, caption, NSFW, similarity as float32 bits, both vectors as raw little-endian float32 bytes."""


# -- an independent, obviously sequential RowBinary reader ----------------------------------------------------


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        assert len(chunk) == n, "truncated RowBinary"
        self.pos += n
        return chunk

    def varuint(self) -> int:
        shift = value = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    def row(self) -> Row:
        (row_id,) = struct.unpack("<q", self.take(8))
        url, caption, nsfw = (self.take(self.varuint()) for _ in range(3))
        (sim_bits,) = struct.unpack("<I", self.take(4))
        img = self.take(4 * self.varuint())
        txt = self.take(4 * self.varuint())
        return (row_id, url, caption, nsfw, sim_bits, img, txt)


def read_rows(data: bytes) -> list[Row]:
    reader = Reader(data)
    rows = []
    while reader.pos < len(data):
        rows.append(reader.row())
    return rows


def expected_rows(batch: pa.RecordBatch) -> list[Row]:
    """What ClickHouse must hold for `batch`: null strings as b'', everything else bit-exact."""
    n = batch.num_rows
    ids = batch.column(0).to_pylist()
    texts = [[v or b"" for v in batch.column(i).cast(pa.large_binary()).to_pylist()] for i in (1, 2, 3)]
    sims = np.asarray(batch.column(4).to_numpy(zero_copy_only=False), dtype="<f4").view("<u4").tolist()
    vecs = []
    for i in (5, 6):
        col = batch.column(i)
        flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype="<f4")
        vecs.append([flat[r * col.type.list_size : (r + 1) * col.type.list_size].tobytes() for r in range(n)])
    return [(ids[r], texts[0][r], texts[1][r], texts[2][r], sims[r], vecs[0][r], vecs[1][r]) for r in range(n)]


def body(batch: pa.RecordBatch, fmt: str) -> bytes:
    return b"".join(bytes(p) for p in encode(batch, fmt))  # type: ignore[arg-type]


# -- batches --------------------------------------------------------------------------------------------------

F32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
NASTY = st.sampled_from(["", "'", '"', "\t", "\n", "\\", "\\N", "a\tb\nc\\d'e\"f", "é", "東京", "🤖", "\x00", "\r\n"])
TEXT = st.one_of(st.none(), NASTY, st.text(max_size=60), st.text(alphabet="ab'\"\\\t\n", min_size=120, max_size=300))


def make_batch(
    ids: list[int],
    urls: list[str | None],
    captions: list[str | None],
    nsfw: list[str | None],
    sims: list[float],
    img: np.ndarray,
    txt: np.ndarray,
    text_type: pa.DataType = pa.string(),
) -> pa.RecordBatch:
    dim = img.shape[1]

    def vec(a: np.ndarray) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(a.astype(np.float32).reshape(-1), pa.float32()), dim)

    schema = batch_schema(dim)
    if text_type != pa.string():
        schema = pa.schema([pa.field(f.name, text_type) if f.type == pa.string() else f for f in schema])
    return pa.RecordBatch.from_arrays(
        [
            pa.array(ids, pa.int64()),
            pa.array(urls, text_type),
            pa.array(captions, text_type),
            pa.array(nsfw, text_type),
            pa.array(np.array(sims, dtype=np.float32), pa.float32()),
            vec(img),
            vec(txt),
        ],
        schema=schema,
    )


def vectors(draw: st.DrawFn, size: int) -> np.ndarray:
    """`size` float32s: numpy noise seeded by Hypothesis, with Hypothesis-chosen edge values at chosen places.

    Drawing every float through Hypothesis overruns its buffer on larger batches (the health check then fails
    the run); the edge values (-0.0, subnormals, float32 max) are what matters, and those it still picks.
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.normal(0, 10, size).astype(np.float32)
    for _ in range(draw(st.integers(0, min(size, 8)))):
        values[draw(st.integers(0, size - 1))] = draw(F32)
    return values


@st.composite
def batches(draw: st.DrawFn, dim: int = 4) -> pa.RecordBatch:
    """A random batch, often a slice of a bigger one (nonzero Arrow offsets), string or large_string."""
    n = draw(st.integers(1, 30))
    before = draw(st.integers(0, 5))
    after = draw(st.integers(0, 3))
    total = before + n + after
    # ids: a random start and stride (unique by construction; a unique list draw overruns Hypothesis' buffer)
    start = draw(st.integers(-(2**63), 2**63 - 1 - 64 * total))
    stride = draw(st.integers(1, 64))
    ids = [start + i * stride for i in range(total)]
    texts = [draw(st.lists(TEXT, min_size=total, max_size=total)) for _ in range(3)]
    sims = draw(st.lists(F32, min_size=total, max_size=total))
    img = vectors(draw, total * dim)
    txt = vectors(draw, total * dim)
    text_type = draw(st.sampled_from([pa.string(), pa.large_string()]))
    whole = make_batch(
        ids, texts[0], texts[1], texts[2], sims, img.reshape(total, dim), txt.reshape(total, dim), text_type
    )
    return whole.slice(before, n) if before or after else whole


def boundary_batch(dim: int = 512) -> pa.RecordBatch:
    """Strings across every varint width (127/128, 16383/16384, a 100 kB and a 2 MiB caption)."""
    lengths = [0, 1, 127, 128, 16383, 16384, 100_000, 2_097_151, 2_097_152]
    rng = np.random.default_rng(7)
    n = len(lengths)
    captions: list[str | None] = ["'\"\\\t\n"[i % 5] * k for i, k in enumerate(lengths)]
    urls: list[str | None] = [f"https://x/{i}?q='{i}'" if i % 3 else None for i in range(n)]
    img = rng.normal(size=(n, dim)).astype(np.float32)
    img[0, :4] = np.array([-0.0, 1e-45, np.finfo(np.float32).max, -np.finfo(np.float32).tiny], np.float32)
    txt = rng.normal(size=(n, dim)).astype(np.float32)
    sims = [-0.0, 0.0, 1e-45, 0.33, -1.5, 3.4e38, 0.1, 0.2, 0.3]
    return make_batch(list(range(10_000_000, 10_000_000 + n)), urls, captions, ["UNLIKELY"] * n, sims, img, txt)


# -- fixtures -------------------------------------------------------------------------------------------------


@dataclass
class Tables:
    """A server (18.16 or 26.9) and one table per format in a database of this module's own."""

    server: Any
    names: dict[str, str]

    def __getitem__(self, fmt: str) -> str:
        return self.names[fmt]


@pytest.fixture(scope="module", params=SERVERS)
def tables(request: pytest.FixtureRequest) -> Iterator[Tables]:
    """Module-scoped (hypothesis runs many examples per test), one per server version."""
    server = request.getfixturevalue("ch_server" if request.param == "18.16" else "ch26_server")
    if not server.running:
        server.start()
    db = f"enc_{uuid.uuid4().hex[:10]}"
    server.query(f"CREATE DATABASE {db}")
    refs = {fmt: TableRef(db, f"t_{fmt}") for fmt in FORMAT_NAMES}
    for ref in refs.values():
        server.query(create_table_sql(ref, None))
    yield Tables(server, {fmt: ref.sql for fmt, ref in refs.items()})
    server.query(f"DROP DATABASE IF EXISTS {db}")


def server_roundtrip(server: Any, table: str, batch: pa.RecordBatch, fmt: str) -> list[Row]:
    server.query(f"TRUNCATE TABLE {table}")
    server.query(f"INSERT INTO {table} FORMAT {FORMAT_NAMES[fmt]}", data=body(batch, fmt))  # type: ignore[index]
    return read_rows(server.query(f"SELECT * FROM {table} ORDER BY id FORMAT RowBinary"))


def chdb_roundtrip(tmp: Path, batch: pa.RecordBatch, fmt: str) -> list[Row]:
    path = tmp / f"{uuid.uuid4().hex}.{fmt}"
    path.write_bytes(body(batch, fmt))
    name = FORMAT_NAMES[fmt]  # type: ignore[index]
    query: Any = chdb.query
    res = query(f"SELECT * FROM file('{path}', {name}, '{STRUCTURE}') FORMAT RowBinary", "RowBinary")
    path.unlink()
    return read_rows(res.bytes())


# -- property tests -------------------------------------------------------------------------------------------


@pytest.mark.server
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=batches())
def test_both_formats_roundtrip_through_each_server(tables: Tables, batch: pa.RecordBatch) -> None:
    want = sorted(expected_rows(batch))
    for fmt in ("native", "rowbinary"):
        assert server_roundtrip(tables.server, tables[fmt], batch, fmt) == want, fmt


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=batches())
def test_both_formats_decode_identically_in_chdb_26(
    tmp_path_factory: pytest.TempPathFactory, batch: pa.RecordBatch
) -> None:
    tmp = tmp_path_factory.getbasetemp()
    want = expected_rows(batch)
    for fmt in ("native", "rowbinary"):
        assert chdb_roundtrip(tmp, batch, fmt) == want, fmt


@pytest.mark.server
@pytest.mark.parametrize("fmt", ["native", "rowbinary"])
def test_dim_512_and_every_varint_width(tables: Tables, tmp_path: Path, fmt: str) -> None:
    batch = boundary_batch()
    want = expected_rows(batch)
    assert server_roundtrip(tables.server, tables[fmt], batch, fmt) == want
    assert chdb_roundtrip(tmp_path, batch, fmt) == want
    assert len(want[6][2]) == 100_000 and len(want[8][2]) == 2_097_152


@pytest.mark.server
def test_a_full_8192_row_batch_sliced_from_a_larger_one(tables: Tables, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 8192 + 100
    caps: list[str | None] = [None if i % 17 == 0 else f"cap '{i}' \t é" * (i % 40) for i in range(n)]
    whole = make_batch(
        list(range(n)),
        [f"u{i}" for i in range(n)],
        caps,
        ["NSFW"] * n,
        rng.random(n).tolist(),
        rng.normal(size=(n, 32)).astype(np.float32),
        rng.normal(size=(n, 32)).astype(np.float32),
        pa.large_string(),
    )
    batch = whole.slice(50, 8192)
    want = expected_rows(batch)
    for fmt in ("native", "rowbinary"):
        assert server_roundtrip(tables.server, tables[fmt], batch, fmt) == want, fmt


# -- small exact checks ---------------------------------------------------------------------------------------


def test_varint_matches_leb128() -> None:
    assert varint(0) == b"\x00"
    assert varint(127) == b"\x7f"
    assert varint(128) == b"\x80\x01"
    assert varint(300) == b"\xac\x02"
    assert varint(2**21) == b"\x80\x80\x80\x01"
    with pytest.raises(ValueError):
        varint(-1)


def test_native_block_bytes_by_hand() -> None:
    """One row, two columns, written out byte by byte from the format description."""
    batch = pa.RecordBatch.from_pydict(
        {
            "id": pa.array([5], pa.int64()),
            "v": pa.FixedSizeListArray.from_arrays(pa.array([1.0, -0.0], pa.float32()), 2),
        }
    )
    want = (
        b"\x02\x01"  # columns, rows
        + b"\x02id\x05Int64"
        + struct.pack("<q", 5)
        + b"\x01v\x0eArray(Float32)"
        + struct.pack("<Q", 2)
        + struct.pack("<ff", 1.0, -0.0)
    )
    assert body(batch, "native") == want


def test_rowbinary_bytes_by_hand() -> None:
    batch = pa.RecordBatch.from_pydict({"id": pa.array([7, 8], pa.int64()), "s": pa.array(["é", None])})
    assert body(batch, "rowbinary") == struct.pack("<q", 7) + b"\x02\xc3\xa9" + struct.pack("<q", 8) + b"\x00"


def test_types_and_refusals() -> None:
    assert clickhouse_type(pa.large_string()) == "String"
    assert clickhouse_type(pa.list_(pa.float32(), 512)) == "Array(Float32)"
    with pytest.raises(ValueError, match="no ClickHouse encoding"):
        clickhouse_type(pa.timestamp("s"))
    bad = pa.RecordBatch.from_pydict({"similarity": pa.array([1.0, None], pa.float32())})
    for fn in (encode_native, encode_rowbinary):
        with pytest.raises(ValueError, match="similarity: 1 null"):
            fn(bad)


def test_empty_batch_encodes_to_a_header_or_nothing() -> None:
    batch = boundary_batch(dim=4).slice(0, 0)
    assert body(batch, "rowbinary") == b""
    native = body(batch, "native")
    assert native.startswith(b"\x07\x00\x02id\x05Int64\x03url\x06String")


def test_only_pieces_that_encode_as_views_skip_the_encoder_thread() -> None:
    """The HTTP sink encodes a column-major block's headers and its numeric and vector runs on the event loop (the
    encoding is views of the run's memory); string runs (a varint before every value) and row blocks go to a
    thread."""
    run = vector_array(np.arange(12, dtype=np.float32).reshape(3, 4))
    assert encodes_as_views(run) and encodes_as_views(pa.array([1.5, 2.5], pa.float32()))
    assert encodes_as_views(BlockStart(pa.schema([("id", pa.int64())]), 3)) and encodes_as_views(
        ColumnStart(pa.field("v", run.type), 3)
    )
    assert not encodes_as_views(pa.array(["a", "b"])) and not encodes_as_views(
        pa.record_batch([pa.array([1], pa.int64())], names=["id"])
    )
    assert b"".join(encode_piece(run, "native")) == np.arange(12, dtype="<f4").tobytes()  # the run's own bytes
