"""Independent expectations: what the table must hold, computed straight from the source files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

STRIDE = 10_000_000


def laion400m_paths(s: int) -> tuple[str, str, str]:
    return f"img_emb/img_emb_{s}.npy", f"text_emb/text_emb_{s}.npy", f"metadata/metadata_{s}.parquet"


def expected_rows(
    root: Path, shards: list[int], paths: Callable[[int], tuple[str, str, str]] = laion400m_paths
) -> dict[str, np.ndarray | list[str]]:
    """Columns of the expected table, sorted by id, from np.load + pq.read_table (not our reader);
    `paths(shard)` names the three files (spelled out by each test, not taken from ingest's layouts)."""
    ids, urls, caps, nsfw, sims, imgs, txts = [], [], [], [], [], [], []
    for s in shards:
        img_rel, txt_rel, meta_rel = paths(s)
        img = np.load(root / img_rel)
        txt = np.load(root / txt_rel)
        meta = pq.read_table(root / meta_rel)
        n = meta.num_rows
        ids.append(np.arange(n, dtype=np.int64) + s * STRIDE)
        urls += [u or "" for u in meta.column("url").to_pylist()]
        caps += [c or "" for c in meta.column("caption").to_pylist()]
        nsfw += [x or "" for x in meta.column("NSFW").to_pylist()]
        sims.append(np.asarray(meta.column("similarity").to_numpy(zero_copy_only=False), dtype=np.float32))
        imgs.append(img.astype(np.float32))
        txts.append(txt.astype(np.float32))
    dim = imgs[0].shape[1] if imgs else 0
    return {
        "id": np.concatenate(ids) if ids else np.empty(0, np.int64),
        "url": urls,
        "caption": caps,
        "NSFW": nsfw,
        "similarity": np.concatenate(sims) if sims else np.empty(0, np.float32),
        "image_embedding": np.concatenate(imgs) if imgs else np.empty((0, dim), np.float32),
        "text_embedding": np.concatenate(txts) if txts else np.empty((0, dim), np.float32),
    }


def chdb_rows(db: Path, sql: str) -> list[dict[str, Any]]:
    """An independent look into a chdb data directory (open, query, close: never while a CLI run holds it)."""
    from chdb import session

    s = session.Session(str(db))
    try:
        data = s.query(sql, "JSONEachRow").bytes()
    finally:
        s.close()
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def chdb_table(path: Path, table: str = "laion", database: str = "default") -> pa.Table:
    """Read the whole table back (ordered by id) through chdb in this process."""
    from chdb import session

    s = session.Session(str(path))
    try:
        res = s.query(f"SELECT * FROM `{database}`.`{table}` ORDER BY id", "ArrowStream")
        return pa.ipc.open_stream(res.bytes()).read_all()
    finally:
        s.close()


def vectors(col: pa.ChunkedArray) -> np.ndarray:
    arr = col.combine_chunks()
    if arr.type == pa.null() or len(arr) == 0:
        return np.empty((0, 0), np.float32)
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(len(arr), -1)


def strings(col: pa.ChunkedArray) -> list[str]:
    return [x.decode("utf-8") if isinstance(x, bytes) else x for x in col.to_pylist()]


def assert_table_equals(got: pa.Table, want: dict[str, np.ndarray | list[str]]) -> None:
    """Byte-exact strings, bit-exact floats, same ids in the same order, nothing more or less."""
    ids = got.column("id").to_numpy()
    assert len(ids) == len(want["id"]), f"row count {len(ids)} != {len(want['id'])}"
    assert len(np.unique(ids)) == len(ids), "duplicate ids"
    np.testing.assert_array_equal(ids, want["id"])
    for name in ("url", "caption", "NSFW"):
        assert strings(got.column(name)) == want[name], f"column {name} differs"
    sim = got.column("similarity").to_numpy().astype(np.float32)
    assert sim.tobytes() == np.asarray(want["similarity"]).tobytes(), "similarity differs"
    for name in ("image_embedding", "text_embedding"):
        vec = vectors(got.column(name))
        assert vec.tobytes() == np.asarray(want[name]).tobytes(), f"{name} differs"


def varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """A LEB128 unsigned integer at `pos` (lengths and counts in ClickHouse's formats): (value, next pos)."""
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def parse_rowbinary(data: bytes) -> pa.Table:
    """Our table's columns from RowBinary (a plain loop: test plumbing, independent of ingest/encode.py)."""
    buf = memoryview(data)
    pos = 0
    ids: list[int] = []
    texts: dict[str, list[str]] = {"url": [], "caption": [], "NSFW": []}
    sims: list[float] = []
    vecs: dict[str, list[np.ndarray]] = {"image_embedding": [], "text_embedding": []}
    while pos < len(buf):
        ids.append(int.from_bytes(buf[pos : pos + 8], "little", signed=True))
        pos += 8
        for name in ("url", "caption", "NSFW"):
            n, pos = varint(buf, pos)
            texts[name].append(bytes(buf[pos : pos + n]).decode("utf-8"))
            pos += n
        sims.append(float(np.frombuffer(buf[pos : pos + 4], dtype="<f4")[0]))
        pos += 4
        for name in ("image_embedding", "text_embedding"):
            n, pos = varint(buf, pos)
            vecs[name].append(np.frombuffer(buf[pos : pos + 4 * n], dtype="<f4").copy())
            pos += 4 * n
    cols: dict[str, pa.Array] = {
        "id": pa.array(ids, pa.int64()),
        **{k: pa.array(v, pa.string()) for k, v in texts.items()},
        "similarity": pa.array(np.asarray(sims, dtype=np.float32)),
    }
    for name, rows in vecs.items():
        offsets = np.zeros(len(rows) + 1, dtype=np.int32)
        offsets[1:] = np.cumsum([len(r) for r in rows])
        values = np.concatenate(rows) if rows else np.empty(0, np.float32)
        cols[name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.float32()))
    return pa.table(cols)


def server_table(handle: object, database: str, table: str = "laion") -> pa.Table:
    """Read the whole table back from a loopback clickhouse-server, ordered by id."""
    data = handle.query(  # type: ignore[attr-defined]
        f"SELECT id, url, caption, NSFW, similarity, image_embedding, text_embedding "
        f"FROM `{database}`.`{table}` ORDER BY id FORMAT RowBinary"
    )
    return parse_rowbinary(data)
