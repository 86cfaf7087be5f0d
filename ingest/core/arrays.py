"""numpy arrays as Arrow arrays, wrapped without a copy and without `pa.array`.

`pa.array` imports pandas on its first call (pyarrow asks whether the value is a pandas object), 0.16–0.23 s of a
load's critical path here: the first segment's body waited for it while the server sat idle. Nothing we run needs
pandas, so the load path wraps numpy buffers with `from_buffers` instead.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NUMPY_OF: dict[pa.DataType, np.dtype[np.number]] = {
    t: np.dtype("<" + name)
    for t, name in (
        (pa.int8(), "i1"), (pa.int16(), "i2"), (pa.int32(), "i4"), (pa.int64(), "i8"),
        (pa.uint8(), "u1"), (pa.uint16(), "u2"), (pa.uint32(), "u4"), (pa.uint64(), "u8"),
        (pa.float16(), "f2"), (pa.float32(), "f4"), (pa.float64(), "f8"),
    )
}  # fmt: skip
"""Arrow's fixed-width numeric types → numpy's (little-endian, as Arrow lays them out)."""


def as_numpy(arr: pa.Array) -> np.ndarray:
    """A primitive numeric array's values as numpy, zero-copy, honouring its offset (nulls' slots as stored:
    check `null_count` first). `to_numpy` imports pandas."""
    dtype = NUMPY_OF[arr.type]
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize)


def numeric(values: np.ndarray) -> pa.Array:
    """A 1-d numeric array (int/float), zero-copy: the Arrow array keeps `values`' buffer alive."""
    flat = np.ascontiguousarray(values).reshape(-1)
    return pa.Array.from_buffers(pa.from_numpy_dtype(flat.dtype), len(flat), [None, pa.py_buffer(flat)])


def vectors(values: np.ndarray) -> pa.FixedSizeListArray:
    """An (n, dim) float32 array as fixed-size lists of `dim`, zero-copy."""
    return pa.FixedSizeListArray.from_arrays(numeric(values), values.shape[1])


def keep_mask(rows: int, drop: np.ndarray) -> pa.BooleanArray:
    """A filter keeping `rows` rows but the positions in `drop`, as Arrow's bit-packed booleans."""
    keep = np.ones(rows, dtype=bool)
    keep[drop] = False
    bits = np.packbits(keep, bitorder="little")
    return pa.Array.from_buffers(pa.bool_(), rows, [None, pa.py_buffer(bits)])


def empty_of(kind: pa.DataType) -> pa.Scalar:
    """'' / b'' as a scalar of a (large_)string / (large_)binary type (`pa.scalar` imports pandas too)."""
    wide = pa.types.is_large_string(kind) or pa.types.is_large_binary(kind)
    offsets = pa.py_buffer(np.zeros(2, dtype=np.int64 if wide else np.int32))
    return pa.Array.from_buffers(kind, 1, [None, offsets, pa.py_buffer(b"")])[0]


def filled(arr: pa.Array, value: float | int | str | bytes) -> pa.Array:
    """`pc.fill_null(arr, value)` for '' / b'' / a number, its scalar built without `pa.scalar`."""
    if isinstance(value, str | bytes):
        if value:
            raise ValueError(f"only an empty string fills nulls here, not {value!r}")
        scalar = empty_of(arr.type)
    else:
        as_array = numeric(np.array([value], dtype=np.float64 if isinstance(value, float) else np.int64))
        scalar = pc.cast(as_array, arr.type)[0]
    return pc.fill_null(arr, scalar)
