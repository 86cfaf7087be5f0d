"""Arrow record batch → ClickHouse Native / RowBinary insert bodies. Pure, vectorised, no per-row Python.

Native is columnar, so a batch is mostly views of the Arrow buffers it already has: Int64/Float32 columns and the
flat float32 vectors go out zero-copy; only String columns are rebuilt (a varint length before every value).

RowBinary interleaves rows. Its scatter is done by Arrow's C++ `binary_join_element_wise` over per-row byte
views of every field (built with numpy, zero-copy for fixed-width data): one pass, one output buffer. A numpy
boolean-mask scatter of the same bytes measured ~25x slower (8192 × dim 512: ~110 ms against ~4 ms).

Both encoders accept sliced arrays (nonzero offsets) and string or large_string columns.
"""

from __future__ import annotations

import sys
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest.core.arrays import as_numpy, empty_of
from ingest.core.pieces import BlockStart, ColumnStart, Piece
from ingest.core.schema import is_text

Format = Literal["native", "rowbinary"]

FORMAT_NAMES: dict[Format, str] = {"native": "Native", "rowbinary": "RowBinary"}
"""Our format flag → ClickHouse's FORMAT name."""

_PRIMITIVES: dict[pa.DataType, str] = {
    pa.int8(): "Int8",
    pa.int16(): "Int16",
    pa.int32(): "Int32",
    pa.int64(): "Int64",
    pa.uint8(): "UInt8",
    pa.uint16(): "UInt16",
    pa.uint32(): "UInt32",
    pa.uint64(): "UInt64",
    pa.float32(): "Float32",
    pa.float64(): "Float64",
}

_VARINT_LIMITS = np.array([1 << 7, 1 << 14, 1 << 21, 1 << 28, 1 << 35, 1 << 42, 1 << 49, 1 << 56], dtype=np.uint64)


def varint(value: int) -> bytes:
    """LEB128 of one non-negative int (block headers, names): ClickHouse's VarUInt."""
    if value < 0:
        raise ValueError(f"varint of a negative number: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return varint(len(raw)) + raw


def clickhouse_type(dtype: pa.DataType) -> str:
    """The ClickHouse column type a Native block declares for an Arrow type."""
    if dtype in _PRIMITIVES:
        return _PRIMITIVES[dtype]
    if is_text(dtype):
        return "String"
    if _is_list(dtype) and dtype.value_type in _PRIMITIVES:
        return f"Array({_PRIMITIVES[dtype.value_type]})"
    raise ValueError(f"no ClickHouse encoding for Arrow type {dtype}")


def _is_list(dtype: pa.DataType) -> bool:
    return bool(pa.types.is_fixed_size_list(dtype) or pa.types.is_list(dtype) or pa.types.is_large_list(dtype))


def _bytes_view(values: np.ndarray) -> memoryview:
    """A flat unsigned-byte view (len == nbytes) of a C-contiguous array, little-endian."""
    if values.dtype.byteorder == ">" or (values.dtype.byteorder == "=" and sys.byteorder == "big"):
        values = values.astype(values.dtype.newbyteorder("<"))
    return memoryview(np.ascontiguousarray(values)).cast("B")  # type: ignore[arg-type]


def _primitive(arr: pa.Array, name: str) -> np.ndarray:
    """The values of a null-free primitive array as numpy, zero-copy (honours the array's offset)."""
    if arr.null_count:
        raise ValueError(f"column {name}: {arr.null_count} null value(s); ClickHouse {arr.type} is not nullable")
    return as_numpy(arr)


def _text_array(arr: pa.Array) -> pa.LargeBinaryArray:
    """Any string/binary array as large_binary (data not copied) with nulls as '' (String is not nullable)."""
    binary = arr.cast(pa.large_binary())
    return pc.fill_null(binary, empty_of(binary.type)) if binary.null_count else binary


def _lengths(arr: pa.LargeBinaryArray) -> np.ndarray:
    """Byte length of every value (int64), from the offsets buffer of a possibly sliced array."""
    offsets = np.frombuffer(arr.buffers()[1], dtype="<i8", count=len(arr) + 1, offset=arr.offset * 8)
    return np.diff(offsets)


def _offsets_array(dtype: pa.DataType, offsets: np.ndarray, data: np.ndarray | pa.Buffer) -> pa.LargeBinaryArray:
    """A large_binary array over `data` cut at `offsets` (n+1 int64): per-row byte views, no copy of data."""
    buf = data if isinstance(data, pa.Buffer) else pa.py_buffer(np.ascontiguousarray(data))
    return pa.Array.from_buffers(dtype, len(offsets) - 1, [None, pa.py_buffer(offsets.astype(np.int64)), buf])


def _varints(values: np.ndarray) -> pa.LargeBinaryArray:
    """One LEB128 varint per element as a large_binary array (≤ 9 numpy passes, not one per row)."""
    v = values.astype(np.uint64)
    n = len(v)
    size = 1 + np.searchsorted(_VARINT_LIMITS, v, side="right").astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(size, out=offsets[1:])
    if n and int(size.max()) == 1:
        return _offsets_array(pa.large_binary(), offsets, v.astype(np.uint8))
    out = np.empty(int(offsets[-1]), dtype=np.uint8)
    starts = offsets[:-1]
    for k in range(int(size.max()) if n else 0):
        sel = size > k
        byte = (v[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)
        byte |= np.where(size[sel] > k + 1, np.uint64(0x80), np.uint64(0))
        out[starts[sel] + k] = byte.astype(np.uint8)
    return _offsets_array(pa.large_binary(), offsets, out)


def _join(columns: list[pa.Array]) -> memoryview:
    """Concatenate per-row byte strings across columns, row after row, in one C++ pass."""
    joined = pc.binary_join_element_wise(*columns, empty_of(pa.large_binary()))
    total = int(np.frombuffer(joined.buffers()[1], dtype="<i8", count=1, offset=len(joined) * 8)[0])
    data = joined.buffers()[2]
    return memoryview(data).cast("B")[:total] if data is not None else memoryview(b"")


def _list_parts(arr: pa.Array, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(row lengths int64, flat null-free values) of a fixed-size or variable list array, offset-aware."""
    if arr.null_count:
        raise ValueError(f"column {name}: {arr.null_count} null array(s); ClickHouse Array is not nullable")
    n = len(arr)
    if pa.types.is_fixed_size_list(arr.type):
        size = arr.type.list_size
        lengths = np.full(n, size, dtype=np.int64)
        values = arr.values.slice(arr.offset * size, n * size)
    else:
        width = 8 if pa.types.is_large_list(arr.type) else 4
        offsets = np.frombuffer(arr.buffers()[1], dtype=f"<i{width}", count=n + 1, offset=arr.offset * width)
        lengths = np.diff(offsets).astype(np.int64)
        values = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    return lengths, _primitive(values, name)


# -- Native ---------------------------------------------------------------------------------------------------


def _native_column(arr: pa.Array, name: str) -> list[memoryview]:
    if arr.type in _PRIMITIVES:
        return [_bytes_view(_primitive(arr, name))]
    if is_text(arr.type):
        text = _text_array(arr)
        if not len(text):
            return []
        return [_join([_varints(_lengths(text)), text])]
    if _is_list(arr.type):
        lengths, values = _list_parts(arr, name)
        ends = np.cumsum(lengths, dtype=np.uint64)
        return [_bytes_view(ends.astype("<u8")), _bytes_view(values)]
    raise ValueError(f"column {name}: no ClickHouse encoding for Arrow type {arr.type}")


def encode_native(batch: pa.RecordBatch) -> list[memoryview]:
    """One Native block (no block info, as the HTTP interface reads it) as a list of buffers to send in order.

    Numeric and vector data are views of the batch's own memory: keep `batch` alive until the body is sent.
    """
    header = varint(batch.num_columns) + varint(batch.num_rows)
    parts: list[memoryview] = [memoryview(header)]
    for field, column in zip(batch.schema, batch.columns, strict=True):
        meta = _string(field.name) + _string(clickhouse_type(field.type))
        parts.append(memoryview(meta))
        parts.extend(_native_column(column, field.name))
    return [p for p in parts if p.nbytes]


# -- RowBinary ------------------------------------------------------------------------------------------------


def _fixed_rows(values: np.ndarray, rows: int) -> pa.LargeBinaryArray:
    """Per-row views of a fixed-width value block (rows × width bytes)."""
    flat = np.frombuffer(_bytes_view(values), dtype=np.uint8)
    width = flat.size // rows if rows else 0
    return _offsets_array(pa.large_binary(), np.arange(0, rows * width + 1, max(width, 1))[: rows + 1], flat)


def _rowbinary_fields(arr: pa.Array, name: str) -> list[pa.Array]:
    n = len(arr)
    if arr.type in _PRIMITIVES:
        return [_fixed_rows(_primitive(arr, name), n)]
    if is_text(arr.type):
        text = _text_array(arr)
        return [_varints(_lengths(text)), text]
    if _is_list(arr.type):
        lengths, values = _list_parts(arr, name)
        item = values.dtype.itemsize
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths * item, out=offsets[1:])
        flat = np.frombuffer(_bytes_view(values), dtype=np.uint8)
        return [_varints(lengths), _offsets_array(pa.large_binary(), offsets, flat)]
    raise ValueError(f"column {name}: no ClickHouse encoding for Arrow type {arr.type}")


def encode_rowbinary(batch: pa.RecordBatch) -> memoryview:
    """The batch as RowBinary rows (a bytes-like view of one fresh buffer)."""
    if batch.num_rows == 0:
        return memoryview(b"")
    fields: list[pa.Array] = []
    for field, column in zip(batch.schema, batch.columns, strict=True):
        clickhouse_type(field.type)  # refuse unsupported types with the column's type in the message
        fields.extend(_rowbinary_fields(column, field.name))
    return _join(fields)


def encode(batch: pa.RecordBatch, fmt: Format) -> list[memoryview]:
    """The insert body for `fmt` as buffers to stream in order."""
    if fmt == "native":
        return encode_native(batch)
    body = encode_rowbinary(batch)
    return [body] if body.nbytes else []


# -- one column-major Native block, piece by piece (ingest/core/pieces.py) -----------------------------------------


def _column_start(start: ColumnStart) -> list[memoryview]:
    """Name and type; for an array column also every row's end offset (the values follow in runs)."""
    field = start.field
    parts = [memoryview(_string(field.name) + _string(clickhouse_type(field.type)))]
    if _is_list(field.type):
        if not pa.types.is_fixed_size_list(field.type):
            raise ValueError(f"column {field.name}: only fixed-size arrays stream column by column")
        size = field.type.list_size
        parts.append(_bytes_view(np.arange(size, size * (start.rows + 1), size, dtype="<u8")))
    return parts


def _column_run(arr: pa.Array) -> list[memoryview]:
    """A run of the current column's values: as in a block, minus an array column's offsets (sent up front)."""
    if pa.types.is_fixed_size_list(arr.type):
        return [_bytes_view(_list_parts(arr, "vector")[1])]
    return _native_column(arr, "value")


def _varint_bytes(values: np.ndarray) -> int:
    """Total LEB128 size of non-negative ints."""
    return int(len(values) + np.searchsorted(_VARINT_LIMITS, values.astype(np.uint64), side="right").sum())


def native_block_bytes(schema: pa.Schema, rows: int, values: dict[str, pa.Array]) -> int:
    """The Native size of a column-major block of `rows` rows: `values` holds every column but the fixed-size
    arrays, whose size follows from `rows` (what `encode_piece` sends for it, to the byte)."""
    total = len(varint(len(schema)) + varint(rows))
    for field in schema:
        total += len(_string(field.name) + _string(clickhouse_type(field.type)))
        if pa.types.is_fixed_size_list(field.type):
            total += rows * (8 + field.type.list_size * field.type.value_type.bit_width // 8)
        elif field.type in _PRIMITIVES:
            total += rows * field.type.bit_width // 8
        else:
            lengths = _lengths(_text_array(values[field.name]))
            total += int(lengths.sum()) + _varint_bytes(lengths)
    return total


def encode_piece(piece: Piece, fmt: Format) -> list[memoryview]:
    """One piece of a segment's body as buffers to stream in order (a column-major block is Native only)."""
    if isinstance(piece, pa.RecordBatch):
        return encode(piece, fmt)
    if fmt != "native":
        raise ValueError(f"a column-major block has no {FORMAT_NAMES[fmt]} encoding")
    if isinstance(piece, BlockStart):
        return [memoryview(varint(len(piece.schema)) + varint(piece.rows))]
    if isinstance(piece, ColumnStart):
        return _column_start(piece)
    return [p for p in _column_run(piece) if p.nbytes]


def encodes_as_views(piece: Piece) -> bool:
    """True when encoding `piece` is only views of its memory and a few header bytes (a block's or a column's
    start, a run of numbers or fixed-size arrays): too little work to be worth a hop to a thread. Row blocks and
    runs of strings (a varint before every value) are real work."""
    return isinstance(piece, BlockStart | ColumnStart) or (
        isinstance(piece, pa.Array) and (piece.type in _PRIMITIVES or pa.types.is_fixed_size_list(piece.type))
    )


def body_size(parts: list[memoryview]) -> int:
    return sum(p.nbytes for p in parts)


# -- streaming several blocks as one atomic body ----------------------------------------------------------------

SEAM_BYTES = 64
"""Bytes of each side of a block boundary sent together in one piece (see `seam_pieces`)."""

ABORT_BLOCK = varint(1) + varint(1) + _string("laion_ingest_abort") + _string("AbortedInsert_NoSuchType")
"""A Native block header no server can parse: sent after a whole block when the body's source fails, so the
server fails the INSERT (discarding the blocks it squashed) instead of reading a clean end of data."""


def split_head(parts: list[memoryview], n: int) -> tuple[bytes, list[memoryview]]:
    """The first `n` bytes of `parts` (copied) and the views of the rest."""
    head = bytearray()
    rest: list[memoryview] = []
    for p in parts:
        take = min(n - len(head), p.nbytes)
        if take > 0:
            head += p[:take]
        if take < p.nbytes:
            rest.append(p[take:] if take > 0 else p)
    return bytes(head), rest


def split_tail(parts: list[memoryview], n: int) -> tuple[list[memoryview], bytes]:
    """The views of all but the last `n` bytes of `parts`, and those last bytes (copied)."""
    total = body_size(parts)
    keep = max(0, total - n)
    rest, tail = [], bytearray()
    seen = 0
    for p in parts:
        if seen + p.nbytes <= keep:
            rest.append(p)
        else:
            cut = max(0, keep - seen)
            if cut:
                rest.append(p[:cut])
            tail += p[cut:]
        seen += p.nbytes
    return rest, bytes(tail)
