"""The NaN/Inf scanner against numpy's isfinite (both dtypes, odd widths); float16 widening against numpy's cast."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.stages.npy import nonfinite_rows, widen

SPECIALS = [np.nan, np.inf, -np.inf, 65504.0, -65504.0, 0.0, -0.0, 1e-7, 6.1e-5, 1.0]


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(1, 40),
    dim=st.sampled_from([1, 3, 4, 8, 12, 16, 512]),
    dtype=st.sampled_from([np.float16, np.float32]),
    seed=st.integers(0, 2**32 - 1),
    specials=st.integers(0, 10),
)
def test_matches_isfinite(rows: int, dim: int, dtype: type, seed: int, specials: int) -> None:
    rng = np.random.default_rng(seed)
    block = rng.normal(0, 10, (rows, dim)).astype(dtype)
    for _ in range(specials):
        block[rng.integers(rows), rng.integers(dim)] = SPECIALS[rng.integers(len(SPECIALS))]
    want = np.flatnonzero(~np.isfinite(block).all(axis=1))
    np.testing.assert_array_equal(nonfinite_rows(block), want)


def test_all_bit_patterns_float16() -> None:
    """Every one of the 65536 float16 values, in every lane position of a 64-bit word."""
    values = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    for lane in range(4):
        block = np.zeros((65536, 4), dtype=np.float16)
        block[:, lane] = values
        want = np.flatnonzero(~np.isfinite(values))
        np.testing.assert_array_equal(nonfinite_rows(block), want)


def test_float32_bit_patterns_at_every_boundary() -> None:
    """The float32 patterns where finite meets non-finite, both signs (NaN with and without its sign bit)."""
    edges = [
        0x00000000,
        0x7F7FFFFF,
        0x7F800000,
        0x7F800001,
        0x7FC00000,
        0x7FFFFFFF,
        0x80000000,
        0xFF7FFFFF,
        0xFF800000,
        0xFF800001,
        0xFFC00000,
        0xFFFFFFFF,
    ]
    values = np.array(edges, dtype=np.uint32).view(np.float32)
    for lane in range(2):
        block = np.ones((len(edges), 2), dtype=np.float32)
        block[:, lane] = values
        np.testing.assert_array_equal(nonfinite_rows(block), np.flatnonzero(~np.isfinite(values)))


def test_scan_of_a_file_finds_rows_in_every_window(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The whole-file scan (one reused buffer, windows of 7 rows, a short last window) against np.isfinite."""
    from ingest.stages.npy import read_npy_header, scan_nonfinite

    for dtype in (np.float16, np.float32):
        rows = np.random.default_rng(1).normal(size=(30, 12)).astype(dtype)
        for r, c, v in [(0, 0, np.nan), (6, 11, np.inf), (7, 3, -np.inf), (20, 5, np.nan), (29, 0, np.inf)]:
            rows[r, c] = v
        path = tmp_path / f"e_{np.dtype(dtype).name}.npy"
        np.save(path, rows)
        info = read_npy_header(path, 0, "img_emb", 12)
        np.testing.assert_array_equal(
            scan_nonfinite(info, 7 * 12 * rows.itemsize), np.flatnonzero(~np.isfinite(rows).all(axis=1))
        )


def test_widen_is_numpys_exact_cast_for_every_float16_value() -> None:
    """numkong's SIMD cast must agree bit for bit with numpy's for all 65,536 float16 values (subnormals, ±0,
    ±Inf; NaN stays NaN), into a fresh array, into a given one, and from a strided view."""
    every = np.arange(65536, dtype=np.uint16).view(np.float16).reshape(128, 512)
    want = every.astype(np.float32)
    out = np.full(every.shape, 7.0, dtype=np.float32)
    for got in (widen(every), widen(every, out), widen(every[:, ::2])):
        ref = want if got.shape == want.shape else want[:, ::2]
        nan = np.isnan(ref)
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert np.array_equal(np.isnan(got), nan)
        assert np.array_equal(got.view(np.uint32)[~nan], ref.view(np.uint32)[~nan])
    assert widen(want) is want  # float32 passes through
