"""A Native segment goes to each real server (18.16 and 26.9) as ONE column-major block: the body's header, read
from a loopback capture, declares all of the segment's rows (nothing left for the server to squash), and the rows
land byte-exact — float16 and float32 shards, NaN rows skipped, extra columns with nulls. A column-major body whose
source fails midway lands nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_run import cli
from exact import assert_table_equals, expected_rows, server_table, varint
from http_capture import KEEP, Capture
from sink_batches import sink_settings, small_batch
from test_layouts import _with_nulls

from ingest.core.ids import TableRef
from ingest.core.pieces import BlockStart, ColumnStart, Piece
from ingest.core.plan import SegmentPlan
from ingest.sinks.http import HttpSink
from ingest.stages.synth import SynthSpec, write_npy, write_shard

STRIDE = 10_000_000
SEGMENT = 500
NAN_ROWS = {0: [7, 260, 261, 999]}
"""Rows of shard 0 given a NaN / Inf: segment 0 loses three rows in two of its windows, segment 1 one row."""
EXTRAS = "key,width,watermark,aesthetic"


def _string(buf: bytes, pos: int) -> tuple[str, int]:
    n, pos = varint(buf, pos)
    return buf[pos : pos + n].decode(), pos + n


def first_column(body: bytes) -> tuple[int, int, str, str, np.ndarray, str]:
    """(columns, rows, first column's name and type, its Int64 values, the second column's name) of a Native
    body's first block: a plain reader, independent of ingest's encoder."""
    cols, pos = varint(body, 0)
    rows, pos = varint(body, pos)
    name, pos = _string(body, pos)
    typ, pos = _string(body, pos)
    ids = np.frombuffer(body, dtype="<i8", count=rows, offset=pos)
    second, _ = _string(body, pos + 8 * rows)
    return cols, rows, name, typ, ids, second


def _shards(src: Path) -> None:
    """Shard 0 float16 with NaN/Inf rows, shard 1 float32; both with typed extra columns holding nulls."""
    for shard, dtype in ((0, "float16"), (1, "float32")):
        files = write_shard(src, shard, SynthSpec(rows=1200, dim=32, seed=shard, dtype=dtype))
        _with_nulls(files.meta)
    img_path = src / "img_emb" / "img_emb_0.npy"
    img = np.load(img_path)
    for i, row in enumerate(NAN_ROWS[0]):
        img[row, i % 32] = np.nan if i % 2 else np.inf
    write_npy(img_path, img)


@pytest.mark.server
def test_each_segment_is_one_native_block_and_lands_byte_exact(server: Any, server_db: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _shards(src)
    args = [
        "run", "--source", str(src), "--shards", "0-1", "--target", "", "--database", server_db, "--dim", "32",
        "--batch-rows", "250", "--segment-rows", str(SEGMENT), "--no-progress", "--state", str(tmp_path / "l.json"),
        "--on-nan", "skip-row", "--extra-columns", EXTRAS,
    ]  # fmt: skip
    env = {"CLICKHOUSE_USER": "ingest", "CLICKHOUSE_PASSWORD": server.password}
    with Capture(server.http_port) as cap:
        args[args.index("--target") + 1] = cap.url
        res = cli(*args, env=env)
        inserts = cap.inserts(body_bytes=KEEP)
    assert res.returncode == 0, res.stderr
    dropped = {STRIDE * 0 + r for r in NAN_ROWS[0]}
    want_ids = {
        (shard, start): [i for i in range(shard * STRIDE + start, shard * STRIDE + min(start + SEGMENT, 1200))]
        for shard in (0, 1)
        for start in range(0, 1200, SEGMENT)
    }
    seen = set()
    for r in inserts:
        cols, rows, name, typ, ids, second = first_column(r.body_start)
        first = int(ids[0]) if rows else -1
        key = (first // STRIDE, (first % STRIDE) // SEGMENT * SEGMENT)
        want = [i for i in want_ids[key] if i not in dropped]
        assert (cols, name, typ, second) == (7 + len(EXTRAS.split(",")), "id", "Int64", "url")
        assert rows == len(want) and ids.tolist() == want, (key, rows)  # the whole segment in the first block
        assert "transfer-encoding" not in r.headers and int(r.headers["content-length"]) > rows * 2 * 32 * 4
        seen.add(key)
    assert seen == set(want_ids) and len(inserts) == len(want_ids)
    want_rows = expected_rows(src, [0, 1])
    keep = ~np.isin(want_rows["id"], list(dropped))
    assert_table_equals(
        server_table(server, server_db),
        {k: (np.asarray(v)[keep] if isinstance(v, np.ndarray) else [x for x, k2 in zip(v, keep, strict=True) if k2])
         for k, v in want_rows.items()},
    )  # fmt: skip
    extras = pa.concat_tables(pq.read_table(src / "metadata" / f"metadata_{s}.parquet") for s in (0, 1))
    extras = extras.filter(pa.array(keep))
    got = server.query(f"SELECT key, width, watermark, aesthetic FROM {server_db}.laion ORDER BY id FORMAT TSV")
    lines = [line.split("\t") for line in got.decode().splitlines()]
    assert [x[0] for x in lines] == [v or "" for v in extras.column("key").to_pylist()]
    assert [int(x[1]) for x in lines] == [v or 0 for v in extras.column("width").to_pylist()]
    assert [int(x[2]) for x in lines] == [
        int(v) if v is not None else 0 for v in extras.column("watermark").to_pylist()
    ]
    aesthetic = np.array([float(x[3]) if x[3] != "nan" else np.nan for x in lines], dtype=np.float32)
    want_aesthetic = np.array([np.nan if v is None else v for v in extras.column("aesthetic").to_pylist()], np.float32)
    assert aesthetic.tobytes() == want_aesthetic.tobytes()


async def _broken(batch: pa.RecordBatch) -> AsyncIterator[Piece]:
    """A column-major block whose source fails after two whole columns and half of a third."""
    yield BlockStart(batch.schema, batch.num_rows)
    for i, field in enumerate(batch.schema):
        yield ColumnStart(field, batch.num_rows)
        if i == 2:
            yield batch.column(i).slice(0, batch.num_rows // 2)
            raise OSError("Input/output error")
        yield batch.column(i)


@pytest.mark.server
def test_a_column_major_body_cut_by_its_source_lands_nothing(server: Any, server_db: str) -> None:
    ref = TableRef(server_db, "laion")
    batch = small_batch(0, 300, dim=16)
    seg = SegmentPlan(0, 0, 0, 300, 300, 300)

    async def go() -> int:
        sink = HttpSink(sink_settings(server.http_url, server_db, user="ingest", password=server.password))
        try:
            await sink.connect()
            with pytest.raises(OSError, match="Input/output error"):
                await sink.insert(ref, seg, _broken(batch), None)
            return await sink.count_range(ref, 0, STRIDE)
        finally:
            await sink.close()

    server.query(
        f"CREATE TABLE {server_db}.laion (id Int64, url String, caption String, NSFW String, similarity Float32, "
        "image_embedding Array(Float32), text_embedding Array(Float32)) ENGINE = MergeTree ORDER BY id"
    )
    assert asyncio.run(go()) == 0
