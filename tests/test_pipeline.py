"""The pipeline's segment logic with an in-memory fake sink: which segments are sent, how a shard that breaks while
streaming is cleaned up, and that the ledger resumes at segment granularity (v1 ledgers read gracefully)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Generator
from pathlib import Path

import pyarrow as pa
import pytest
from test_landing import FakeSink

from ingest.core.config import LoadConfig, RunConfig, SourceConfig, TargetConfig
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
