"""The pipeline's segment logic with an in-memory fake sink: which segments are sent, how a shard that breaks while
streaming is cleaned up, and that the ledger resumes at segment granularity (v1 ledgers read gracefully)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest
from test_landing import FakeSink

from ingest.core.config import LoadConfig, RunConfig, SourceConfig, TargetConfig
from ingest.core.errors import BadShardError
from ingest.core.ids import TableRef
from ingest.core.plan import SegmentPlan
from ingest.core.retry import RetryPolicy
from ingest.core.schema import TableSchema
from ingest.core.target import parse_target
from ingest.load import pipeline as pipeline_mod
from ingest.load.ledger import Ledger
from ingest.load.pipeline import Pipeline, RunResult
from ingest.load.progress import LogReporter
from ingest.stages.shard import ValidShard, read_segment
from ingest.stages.source import open_source

STRIDE = 10_000_000


def settings(src: Path) -> RunConfig:
    return RunConfig(
        shards=(0, 1),
        table=TableRef("default", "laion"),
        target=TargetConfig(spec=parse_target("chdb:/nonexistent"), schema=TableSchema(dim=8)),
        source=SourceConfig(root=str(src)),
        load=LoadConfig(dim=8, batch_rows=100, segment_rows=300, retry=RetryPolicy(max_retries=1, max_seconds=0)),
    )


def run(src: Path, sink: FakeSink, ledger: Ledger) -> RunResult:
    cfg = settings(src)
    pipe = Pipeline(cfg, sink, open_source(cfg.source), ledger, LogReporter())  # type: ignore[arg-type]
    return asyncio.run(pipe.run([0, 1]))


def test_every_segment_is_one_insert_and_the_ledger_resumes_by_segment(make_shards, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_shards([0, 1], rows=1000, dim=8)
    sink = FakeSink(dedup=False)
    ledger = Ledger.load(tmp_path / "ledger.json", "default.laion")
    res = run(src, sink, ledger)
    assert sorted(res.shards_done) == [0, 1] and res.rows_inserted == 2000
    assert len(sink.inserts) == 8  # 300, 300, 300, 100 rows per shard
    assert sink.ids == set(range(1000)) | set(range(STRIDE, STRIDE + 1000))
    doc = json.loads((tmp_path / "ledger.json").read_text())
    assert doc["version"] == 2 and doc["shards"]["0"] == {"rows": 1000, "segment_rows": 300, "done": [],
                                                          "complete": True}  # fmt: skip


def test_a_partial_v1_ledger_is_reconciled_by_counting(make_shards, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A ledger from before segments: complete shards stay complete, batch-level `done` lists are not trusted."""
    src = make_shards([0, 1], rows=1000, dim=8)
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps({
        "version": 1, "table": "default.laion", "quarantined": {},
        "shards": {"0": {"rows": 1000, "batch_rows": 100, "done": [], "complete": True},
                   "1": {"rows": 1000, "batch_rows": 100, "done": [[0, 4]], "complete": False}},
    }))  # fmt: skip
    sink = FakeSink(dedup=False)
    sink.ids = set(range(STRIDE, STRIDE + 500))  # shard 1's batches 0-4 did land
    res = run(src, sink, Ledger.load(path, "default.laion"))
    assert sorted(res.shards_done) == [0, 1]
    assert res.rows_inserted == 700 and res.rows_already == 300  # segment 0 full, 1 partial (re-sent), 2-3 new
    assert sink.deletes == 1
    assert sink.ids == set(range(STRIDE, STRIDE + 1000))


def test_a_shard_that_breaks_while_streaming_is_removed_and_quarantined(
    make_shards, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    src = make_shards([0, 1], rows=1000, dim=8)

    def flaky(shard: ValidShard, segment: SegmentPlan) -> Generator[pa.RecordBatch, None, None]:
        for i, b in enumerate(read_segment(shard, segment)):
            if shard.shard == 1 and segment.index == 2 and i == 1:
                raise OSError("Input/output error")
            yield b

    monkeypatch.setattr(pipeline_mod, "read_segment", flaky)
    sink = FakeSink(dedup=False)
    res = run(src, sink, Ledger.load(tmp_path / "ledger.json", "default.laion"))
    assert res.shards_done == [0]
    assert "read failed after validation (Input/output error)" in res.shards_bad[1]
    assert sink.ids == set(range(1000))  # nothing of shard 1 is left


def test_segments_are_sized_from_the_shards_own_texts(make_shards, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """validate_shard measures the text bytes a row of the heaviest scan window (read here independently with
    pyarrow), and a shard with heavier texts is cut into smaller segments under the same byte bound."""
    import pyarrow.parquet as pq

    from ingest.core.plan import plan_segments, row_bytes
    from ingest.stages.shard import SCAN_ROWS, ShardFiles, validate_shard

    src = make_shards([0], rows=SCAN_ROWS + 5000, dim=16)
    files = ShardFiles.in_dir(src, 0)
    table = pq.read_table(files.meta)
    caption = table.column("caption").to_pylist()
    caption[SCAN_ROWS + 10] = "x" * 200_000  # one heavy caption in the second window
    pq.write_table(table.set_column(table.schema.get_field_index("caption"), "caption", pa.array(caption)), files.meta)

    def window_bytes(lo: int, hi: int) -> int:
        cols = [table.column(c).to_pylist() for c in ("url", "NSFW")] + [caption]
        return sum(len((col[i] or "").encode()) for col in cols for i in range(lo, hi))

    n = table.num_rows
    expected = max(
        -(-window_bytes(lo, min(lo + SCAN_ROWS, n)) // (min(lo + SCAN_ROWS, n) - lo)) for lo in (0, SCAN_ROWS)
    )
    valid = validate_shard(files, 16, "fail-shard")
    assert valid.text_bytes == expected > 200_000 // (n - SCAN_ROWS)
    budget = 1000 * row_bytes(16, 60)
    light = plan_segments(0, n, 100_000, 1, segment_bytes=budget, dim=16, text_bytes=60)
    heavy = plan_segments(0, n, 100_000, 1, segment_bytes=budget, dim=16, text_bytes=valid.text_bytes)
    assert light[0].rows == 1000 and heavy[0].rows == budget // row_bytes(16, valid.text_bytes) < 1000


def test_the_next_segments_read_starts_once_this_ones_is_read_and_before_its_insert_returns(
    make_shards, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """One worker: segment k+1's first block is read, and its range waited for and counted, while segment k's
    INSERT still runs on the server (its tail: the part written after the body), never before segment k's last
    block was read (memory stays bounded)."""
    src = make_shards([0, 1], rows=1000, dim=8)
    first_read: dict[tuple[int, int], float] = {}
    last_read: dict[tuple[int, int], float] = {}
    returned: dict[tuple[int, int], float] = {}
    counted: dict[int, float] = {}
    first_ids: dict[tuple[int, int], int] = {}

    def timed(shard: ValidShard, segment: SegmentPlan) -> Generator[pa.RecordBatch, None, None]:
        key = (shard.shard, segment.index)
        for b in read_segment(shard, segment):
            first_read.setdefault(key, time.monotonic())
            last_read[key] = time.monotonic()
            yield b

    class TailSink(FakeSink):
        async def count_range(self, ref: TableRef, first_id: int, last_id: int) -> int:
            counted.setdefault(first_id, time.monotonic())
            return await super().count_range(ref, first_id, last_id)

        async def insert(self, ref, segment, blocks, token, query_id=None) -> None:  # type: ignore[no-untyped-def]
            first_ids[(segment.shard, segment.index)] = segment.first_id
            await super().insert(ref, segment, blocks, token, query_id)
            await asyncio.sleep(0.3)  # the server squashes and writes the part after the last byte
            returned[(segment.shard, segment.index)] = time.monotonic()

    monkeypatch.setattr(pipeline_mod, "read_segment", timed)
    cfg = settings(src)
    cfg = replace(cfg, load=replace(cfg.load, insert_concurrency=1, queue_depth=1))
    sink = TailSink(dedup=False)
    pipe = Pipeline(
        cfg, sink, open_source(cfg.source), Ledger.load(tmp_path / "l.json", "default.laion"), LogReporter()
    )  # type: ignore[arg-type]
    res = asyncio.run(pipe.run([0, 1]))
    assert res.rows_inserted == 2000 and sink.ids == set(range(1000)) | set(range(STRIDE, STRIDE + 1000))
    order = sorted(returned, key=returned.__getitem__)
    assert len(order) == 8
    for this, following in itertools.pairwise(order):
        assert last_read[this] < first_read[following] < returned[this], (this, following)
        assert last_read[this] < counted[first_ids[following]] < returned[this], (this, following)


def test_a_read_opened_ahead_reads_a_bounded_way_and_closes_its_files_unused() -> None:
    """SegmentRead reads as soon as it is opened, at most its queue plus the piece in hand ahead of its consumer;
    closed unused (the segment was already in the table), its generator is closed and never advanced again."""
    from ingest.load.segment_read import SegmentRead

    advanced: list[int] = []
    closed: list[bool] = []

    def pieces() -> Generator[pa.RecordBatch, None, None]:
        try:
            for i in range(100):
                advanced.append(i)
                yield pa.record_batch({"id": [i]})
        finally:
            closed.append(True)

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            read = SegmentRead(pieces(), pool, depth=2, shard=7)
            await asyncio.sleep(0.3)
            assert 1 <= len(advanced) <= 3  # two queued, one waiting to be queued
            await read.close()
            n = len(advanced)
            await asyncio.sleep(0.1)
            assert closed == [True] and len(advanced) == n
            await read.read()  # returns at once: the read is over

    asyncio.run(main())


def test_a_read_closed_while_reading_waits_for_that_read_and_queues_nothing_after() -> None:
    """close() during a slow next(): the generator finishes that step, is closed (never advanced while or after it
    is closed), and the piece read meanwhile is not queued for anyone."""
    import threading

    from ingest.load.segment_read import SegmentRead

    inside = threading.Event()
    release = threading.Event()
    steps: list[str] = []

    def pieces() -> Generator[pa.RecordBatch, None, None]:
        try:
            for i in range(10):
                steps.append(f"start {i}")
                if i == 1:
                    inside.set()
                    release.wait(5)
                steps.append(f"end {i}")
                yield pa.record_batch({"id": [i]})
        finally:
            steps.append("closed")

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            read = SegmentRead(pieces(), pool, depth=4, shard=7)
            await asyncio.to_thread(inside.wait, 5)
            closing = asyncio.create_task(read.close())
            await asyncio.sleep(0.1)
            assert not closing.done()  # the read in progress finishes first
            release.set()
            await asyncio.wait_for(closing, 5)
            assert steps == ["start 0", "end 0", "start 1", "end 1", "closed"]
            assert read._q.empty()  # piece 0 was emptied out, piece 1 never queued

    asyncio.run(main())


def test_a_read_error_reaches_the_insert_as_the_shards_fault() -> None:
    from ingest.load.segment_read import SegmentRead

    def pieces() -> Generator[pa.RecordBatch, None, None]:
        yield pa.record_batch({"id": [1]})
        raise OSError("Input/output error")

    async def main() -> list[int]:
        got: list[int] = []
        fault = r"shard 7.*read failed after validation \(Input/output error\)"
        with ThreadPoolExecutor(1) as pool, pytest.raises(BadShardError, match=fault):
            async for p in SegmentRead(pieces(), pool, depth=1, shard=7).pieces():
                assert isinstance(p, pa.RecordBatch)
                got.append(p.column(0)[0].as_py())
        return got

    assert asyncio.run(main()) == [1]
