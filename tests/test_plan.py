"""Pure planning: shard specs, worker slices, batch and segment cutting, SQL quoting, target parsing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.core.errors import ConfigError, UsageError
from ingest.core.ids import TableRef, quote_ident
from ingest.core.plan import (
    ID_STRIDE,
    SEGMENT_BYTES,
    SEGMENT_ROWS,
    parse_shard_spec,
    plan_batches,
    plan_segments,
    row_bytes,
    segment_size,
    worker_slice,
)
from ingest.core.target import parse_target


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ("0-2,5,7-9", [0, 1, 2, 5, 7, 8, 9]),
        ("3", [3]),
        (" 1 - 3 , 2 ", [1, 2, 3]),
        ("409", [409]),
        ("0-0", [0]),
    ],
)
def test_shard_spec(spec: str, want: list[int]) -> None:
    assert parse_shard_spec(spec) == want


@pytest.mark.parametrize("spec", ["", "a", "1-", "3-1", "1,,2", "-1", "1.5"])
def test_bad_shard_spec_is_a_usage_error(spec: str) -> None:
    with pytest.raises(UsageError):
        parse_shard_spec(spec)


@given(st.lists(st.integers(0, 500), min_size=1, max_size=40), st.integers(1, 7))
def test_worker_slices_are_disjoint_and_cover(shards: list[int], count: int) -> None:
    uniq = sorted(set(shards))
    parts = [worker_slice(uniq, i, count) for i in range(count)]
    flat = sorted(s for p in parts for s in p)
    assert flat == uniq


def test_worker_index_out_of_range() -> None:
    with pytest.raises(UsageError):
        worker_slice([1, 2], 2, 2)


@settings(deadline=None)  # no timing assertions in unit tests: the CPU here is shared
@given(st.integers(0, 100_000), st.integers(1, 20_000), st.integers(0, 409))
def test_batches_cover_rows_exactly_once(rows: int, batch_rows: int, shard: int) -> None:
    plans = plan_batches(shard, rows, batch_rows)
    assert sum(p.rows for p in plans) == rows
    assert all(0 < p.rows <= batch_rows for p in plans)
    assert [p.index for p in plans] == list(range(len(plans)))
    for a, b in itertools.pairwise(plans):
        assert a.stop == b.start and a.last_id + 1 == b.first_id
    if plans:
        assert plans[0].first_id == shard * ID_STRIDE
        assert plans[-1].last_id == shard * ID_STRIDE + rows - 1


def test_batch_boundaries() -> None:
    assert [(p.start, p.stop) for p in plan_batches(1, 10, 4)] == [(0, 4), (4, 8), (8, 10)]
    assert [(p.start, p.stop) for p in plan_batches(1, 1, 8192)] == [(0, 1)]
    assert plan_batches(1, 0, 8192) == []


def test_tokens_are_deterministic_and_distinct() -> None:
    a, b = plan_batches(3, 100, 10)[:2]
    assert a.token("db.t", 10) == plan_batches(3, 100, 10)[0].token("db.t", 10)
    assert a.token("db.t", 10) != b.token("db.t", 10)
    assert a.token("db.t", 10) != a.token("db.u", 10)


@pytest.mark.parametrize("name", ["x; DROP TABLE y", "a b", "1abc", "", "t`", "x'--"])
def test_unsafe_table_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError):
        TableRef("default", name)


def test_quote_ident() -> None:
    assert quote_ident("laion") == "`laion`"
    assert quote_ident("a`b") == "`a\\`b`"
    assert TableRef("db", "laion").sql == "`db`.`laion`"


def test_targets() -> None:
    t = parse_target("chdb:./laion-db")
    assert (t.kind, t.path) == ("chdb", "./laion-db")
    h = parse_target("http://127.0.0.1:8123/mydb")
    assert (h.kind, h.base_url, h.database) == ("http", "http://127.0.0.1:8123", "mydb")
    assert parse_target("https://ch.example.com").base_url == "https://ch.example.com:8443"
    for bad in ("mysql://x", "chdb:", "http://u:secret@h:8123"):
        with pytest.raises(ConfigError) as info:
            parse_target(bad)
        assert "secret" not in str(info.value)


@settings(deadline=None)
@given(
    st.integers(0, 300_000),
    st.integers(1, 100_000),
    st.integers(1, 20_000),
    st.integers(1, 1024),
    st.integers(1 << 16, 1 << 29),
    st.integers(0, 1 << 16),
)
def test_segments_cover_rows_once_in_whole_blocks_under_the_byte_bound(
    rows: int, segment_rows: int, block_rows: int, dim: int, segment_bytes: int, text: int
) -> None:
    if segment_bytes < row_bytes(dim, text):
        with pytest.raises(UsageError, match="--segment-bytes"):
            plan_segments(0, rows, segment_rows, block_rows, segment_bytes=segment_bytes, dim=dim, text_bytes=text)
        return
    segs = plan_segments(7, rows, segment_rows, block_rows, segment_bytes=segment_bytes, dim=dim, text_bytes=text)
    assert sum(s.rows for s in segs) == rows
    assert [s.index for s in segs] == list(range(len(segs)))
    for s in segs:
        assert 0 < s.rows <= min(segment_rows, s.cut)
        assert s.rows * row_bytes(dim, text) <= segment_bytes  # the byte bound holds for every segment
        blocks = s.blocks()
        assert blocks[0].start == s.start and blocks[-1].stop == s.stop
        assert all(0 < b.rows <= s.block_rows for b in blocks)
        assert all(a.stop == b.start for a, b in itertools.pairwise(blocks))
        if s.cut > s.block_rows:
            assert s.cut % s.block_rows == 0  # whole blocks: every block lies in one segment
    for a, b in itertools.pairwise(segs):
        assert a.stop == b.start and a.last_id + 1 == b.first_id


def test_segment_defaults_and_tokens() -> None:
    # dim 512: the 256 MiB byte bound cuts, not the row cap; texts of ~56 bytes a row (our synth) give 15 blocks
    # of 4,096, the 512-byte allowance (texts not measured) 14
    assert segment_size(SEGMENT_ROWS, SEGMENT_BYTES, 4096, 512, 56) == (61_440, 4096)
    assert segment_size(SEGMENT_ROWS, SEGMENT_BYTES, 4096, 512) == (57_344, 4096)
    assert 61_440 * row_bytes(512, 56) < SEGMENT_BYTES < 65_536 * row_bytes(512, 56)
    assert segment_size(SEGMENT_ROWS, SEGMENT_BYTES, 4096, 64, 56) == (SEGMENT_ROWS, 4096)  # small rows: the cap
    # a tight byte bound shrinks the segment to whole blocks; a segment smaller than a block is one block
    assert segment_size(49_152, 100 * row_bytes(512), 30, 512) == (90, 30)
    assert segment_size(500, SEGMENT_BYTES, 8192, 512) == (500, 500)
    segs = plan_segments(2, 1_000_000)
    assert len(segs) == 18 and segs[-1].rows == 1_000_000 - 17 * 57_344
    assert segs[3].blocks()[0].index == 42  # blocks (4,096 rows by default) keep their shard-wide numbers
    a, b = segs[:2]
    assert a.token("db.t") == plan_segments(2, 1_000_000)[0].token("db.t")
    other_cut = plan_segments(2, 1_000_000, 24_576)[0]
    assert len({a.token("db.t"), b.token("db.t"), a.token("db.u"), other_cut.token("db.t")}) == 4
    assert plan_segments(1, 0) == []
