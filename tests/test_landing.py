"""Every branch of landing one segment (count → insert | skip | delete + reinsert, dedup-token surprises,
uncertain failures, retries), against an in-memory fake sink that keeps ids and remembers tokens as ClickHouse's
dedup window does. The real engines run the same code in test_resume, test_faults_http and test_http_sink."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from ingest.core.errors import TargetError, TransientTargetError, UncertainInsertError
from ingest.core.ids import TableRef
from ingest.core.plan import SegmentPlan, plan_segments
from ingest.core.retry import RetryPolicy
from ingest.load.landing import Landing
from ingest.sinks.base import server_info

REF = TableRef("db", "laion")
SEG = plan_segments(3, 1000, 400, 100, dim=4)[1]  # rows 400..799 in 4 blocks of 100


class FakeSink:
    """Ids in a set; an insert consumes the block stream and adds its ids at the end (one squashed block), unless
    its token was seen before (dedup). `script` makes the next inserts fail: "before" (nothing lands), "after"
    (lands, then the connection is lost), "fatal" (refused), "midway" (fails after the first block)."""

    def __init__(self, dedup: bool = True) -> None:
        self.info = server_info("26.9.1" if dedup else "18.16.1")
        self.ids: set[int] = set()
        self.tokens: set[str] = set()
        self.script: list[str] = []
        self.inserts: list[str | None] = []
        self.deletes = 0
        self.counts = 0
        self.forget_tokens_on_delete = False
        self.twin: tuple[str, set[int]] | None = None
        self.waited: list[str] = []
        self.query_ids: list[str | None] = []

    async def count_range(self, ref: TableRef, first_id: int, last_id: int) -> int:
        self.counts += 1
        return sum(1 for i in self.ids if first_id <= i <= last_id)

    async def delete_range(self, ref: TableRef, first_id: int, last_id: int) -> None:
        self.deletes += 1
        self.ids = {i for i in self.ids if not first_id <= i <= last_id}

    async def wait_query_gone(self, query_id: str) -> None:
        """A twin (an INSERT a dead run left running under `query_id`) ends while we wait: its rows land."""
        self.waited.append(query_id)
        if self.twin is not None and self.twin[0] == query_id:
            self.ids |= self.twin[1]
            self.twin = None

    async def insert(
        self,
        ref: TableRef,
        segment: SegmentPlan,
        blocks: AsyncIterator[pa.RecordBatch],
        token: str | None,
        query_id: str | None = None,
    ) -> None:
        self.inserts.append(token)
        self.query_ids.append(query_id)
        if self.twin is not None and self.twin[0] == query_id:
            raise TransientTargetError("Code: 216. Query with id = x is already running", 216)
        action = self.script.pop(0) if self.script else "ok"
        if action == "before":
            raise TransientTargetError("connection refused")
        if action == "fatal":
            raise TargetError("Code: 60. Table does not exist", 60)
        got: set[int] = set()
        async for block in blocks:
            got.update(block.column(0).to_pylist())
            if action == "midway":
                raise UncertainInsertError("connection lost")
        if token is not None and token in self.tokens:
            return  # deduplicated: ClickHouse says OK and writes nothing
        if token is not None:
            self.tokens.add(token)
        self.ids |= got
        if action == "after":
            raise UncertainInsertError("connection lost")


class Blocks:
    """Opens a fresh stream of the segment's blocks per call, and records that each was closed."""

    def __init__(self, segment: SegmentPlan, drop: frozenset[int] = frozenset()) -> None:
        self.segment = segment
        self.drop = drop
        self.opened = 0
        self.started = 0
        self.closed = 0

    def __call__(self) -> AsyncGenerator[pa.RecordBatch, None]:
        self.opened += 1
        return self._gen()

    async def _gen(self) -> AsyncGenerator[pa.RecordBatch, None]:
        self.started += 1
        try:
            for b in self.segment.blocks():
                ids = [i for i in range(b.first_id, b.last_id + 1) if i not in self.drop]
                yield pa.RecordBatch.from_arrays([pa.array(np.array(ids, dtype=np.int64))], names=["id"])
        finally:
            self.closed += 1


def land(sink: FakeSink, blocks: Blocks, expected: int = SEG.rows, retries: int = 3) -> int:
    landing = Landing(sink, REF, RetryPolicy(max_retries=retries), use_token=sink.info.dedup_token, sleep=_no_wait)
    return asyncio.run(landing.land(SEG, expected, blocks))  # type: ignore[arg-type]


async def _no_wait(_seconds: float) -> None:
    return None


def segment_ids() -> set[int]:
    return set(range(SEG.first_id, SEG.last_id + 1))


def test_an_empty_range_is_inserted_once_with_the_segment_token() -> None:
    sink, blocks = FakeSink(), Blocks(SEG)
    assert land(sink, blocks) == SEG.rows
    assert sink.ids == segment_ids()
    assert sink.inserts == [SEG.token(REF.key)]
    assert sink.counts == 2  # before, and the verification after a tokened insert
    assert blocks.opened == blocks.started == blocks.closed == 1


def test_a_full_range_is_skipped_without_reading_a_block() -> None:
    sink, blocks = FakeSink(), Blocks(SEG)
    sink.ids = segment_ids()
    assert land(sink, blocks) == 0
    assert sink.inserts == [] and blocks.opened == 0


def test_a_partial_range_is_deleted_and_sent_with_a_fresh_token(caplog: pytest.LogCaptureFixture) -> None:
    sink, blocks = FakeSink(), Blocks(SEG)
    sink.ids = set(range(SEG.first_id, SEG.first_id + 150)) | {SEG.last_id + 5}  # a torn segment, a neighbour row
    sink.tokens.add(SEG.token(REF.key))  # remembered from the torn insert: reusing it would be deduplicated away
    with caplog.at_level(logging.WARNING):
        assert land(sink, blocks) == SEG.rows
    assert "150 of 400 rows present; replacing the range" in caplog.text
    assert sink.deletes == 1
    assert sink.ids == segment_ids() | {SEG.last_id + 5}
    assert sink.inserts[0] is not None and sink.inserts[0].startswith(SEG.token(REF.key) + ":r")


def test_without_tokens_an_insert_is_trusted_and_not_recounted() -> None:
    sink, blocks = FakeSink(dedup=False), Blocks(SEG)
    assert land(sink, blocks) == SEG.rows
    assert sink.inserts == [None] and sink.counts == 1


def test_a_token_remembered_from_deleted_rows_is_replaced_after_the_count_disagrees() -> None:
    sink, blocks = FakeSink(), Blocks(SEG)
    sink.tokens.add(SEG.token(REF.key))  # an earlier run inserted and someone deleted the rows since
    assert land(sink, blocks) == SEG.rows
    assert sink.ids == segment_ids()
    assert len(sink.inserts) == 2 and sink.inserts[0] == SEG.token(REF.key) and sink.inserts[1] != sink.inserts[0]
    assert blocks.opened == 2  # the re-send read the segment again


def test_a_range_that_never_fills_fails_after_the_resends() -> None:
    sink, blocks = FakeSink(), Blocks(SEG)

    async def swallow(*_args: Any) -> None:
        sink.inserts.append("swallowed")

    sink.insert = swallow  # type: ignore[method-assign,assignment]
    with pytest.raises(TargetError, match=r"shard 3 segment 1: id range does not hold 400 rows after insert"):
        land(sink, blocks)
    assert len(sink.inserts) == 3  # the first send and two fresh-token re-sends


def test_an_insert_that_landed_before_the_connection_was_lost_is_not_sent_again() -> None:
    sink, blocks = FakeSink(), Blocks(SEG)
    sink.script = ["after"]
    assert land(sink, blocks) == 0  # the retry counted the range full
    assert sink.ids == segment_ids() and len(sink.inserts) == 1


def test_an_insert_lost_midway_is_reread_and_sent_again_exactly_once() -> None:
    sink, blocks = FakeSink(), Blocks(SEG)
    sink.script = ["midway", "before"]
    assert land(sink, blocks) == SEG.rows
    assert sink.ids == segment_ids()
    assert len(sink.inserts) == 3 and blocks.opened == 3  # every attempt opens a fresh stream of the segment
    assert blocks.started == 2 and blocks.closed == 2  # the stream abandoned midway was closed, not leaked


def test_a_refused_insert_is_not_retried() -> None:
    sink, blocks = FakeSink(), Blocks(SEG)
    sink.script = ["fatal", "ok"]
    with pytest.raises(TargetError, match="Code: 60"):
        land(sink, blocks)
    assert len(sink.inserts) == 1 and sink.ids == set()


def test_retries_run_out_on_a_target_that_stays_down() -> None:
    sink, blocks = FakeSink(), Blocks(SEG)
    sink.script = ["before"] * 10
    with pytest.raises(TransientTargetError, match="connection refused"):
        land(sink, blocks, retries=2)
    assert len(sink.inserts) == 3 and sink.ids == set()


def test_dropped_rows_count_as_expected_rows() -> None:
    """Rows skipped under --on-nan skip-row are not expected: a range holding the others is complete."""
    drop = frozenset({SEG.first_id + 7, SEG.first_id + 333})
    sink, blocks = FakeSink(), Blocks(SEG, drop)
    assert land(sink, blocks, expected=SEG.rows - 2) == SEG.rows - 2
    assert sink.ids == segment_ids() - drop
    assert land(sink, Blocks(SEG, drop), expected=SEG.rows - 2) == 0


def test_an_insert_a_dead_run_left_running_is_waited_for_before_the_range_is_counted() -> None:
    """Issue #19: a killed run had sent the whole segment; its INSERT still runs on the server. Counting now would
    see 0 rows and send the segment again (twice on a server without dedup tokens). The landing waits for the
    segment's query_id first, then counts the range full and sends nothing."""
    for dedup in (False, True):
        sink, blocks = FakeSink(dedup=dedup), Blocks(SEG)
        sink.twin = (SEG.query_id(REF.key), segment_ids())
        assert land(sink, blocks) == 0
        assert sink.ids == segment_ids() and sink.inserts == [] and blocks.opened == 0
        assert sink.waited == [SEG.query_id(REF.key)]


def test_every_insert_of_a_segment_carries_its_query_id() -> None:
    sink, blocks = FakeSink(), Blocks(SEG)
    sink.script = ["midway", "before"]
    assert land(sink, blocks) == SEG.rows
    qid = SEG.query_id(REF.key)
    assert sink.query_ids == [qid, qid, qid] and sink.waited == [qid, qid, qid]
    assert qid == "laion-ingest:db.laion:30000400-30000799"


def test_a_query_id_refused_as_running_is_transient_and_counted_again() -> None:
    """Code 216: the server refuses an INSERT whose query_id a running one holds; the landing counts again."""

    class Racing(FakeSink):
        async def wait_query_gone(self, query_id: str) -> None:
            self.waited.append(query_id)  # the twin is not seen here (it started after the look)

    sink, blocks = Racing(dedup=False), Blocks(SEG)
    sink.twin = (SEG.query_id(REF.key), segment_ids())
    with pytest.raises(TransientTargetError, match="Code: 216"):
        land(sink, blocks, retries=1)
    assert sink.ids == set() and len(sink.inserts) == 2


def test_a_count_asked_ahead_starts_the_first_attempt_and_a_retry_waits_and_counts_afresh() -> None:
    """The pipeline asks a segment's wait-and-count while the worker's previous INSERT is still written
    (Landing.settled_count): the first attempt starts from that answer instead of asking again; a retry, whose
    range an attempt may have touched, waits for the query id and counts anew."""
    sink, blocks = FakeSink(), Blocks(SEG)
    sink.script = ["midway"]
    landing = Landing(sink, REF, RetryPolicy(max_retries=3), use_token=True, sleep=_no_wait)

    async def main() -> int:
        ahead = asyncio.create_task(landing.settled_count(SEG))
        await asyncio.sleep(0)  # asked before the landing starts, as the pipeline does
        return await landing.land(SEG, SEG.rows, blocks, ahead)  # type: ignore[arg-type]

    assert asyncio.run(main()) == SEG.rows
    qid = SEG.query_id(REF.key)
    assert sink.waited == [qid, qid]  # ahead, and before the retry: not again for the first attempt
    assert sink.counts == 3  # ahead, before the retry, and the verification after the tokened insert
    assert sink.ids == segment_ids() and len(sink.inserts) == 2
