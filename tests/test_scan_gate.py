"""The NaN/Inf scan left running while a shard is sent (validate_shard's defer_scan) and the gate every segment
passes before its last piece (shard.gated). The real-engine side: test_bad_shards.py (a slowed scan, both servers)."""

from __future__ import annotations

from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ingest.core.errors import BadShardError
from ingest.stages.shard import ShardFiles, gated, validate_shard
from ingest.stages.synth import write_npy


def pieces(n: int, log: list[str]) -> Generator[int, None, None]:
    try:
        for i in range(n):
            log.append(f"read {i}")
            yield i
    finally:
        log.append("closed")


def test_the_last_piece_waits_for_the_verdict() -> None:
    log: list[str] = []
    out = []
    for p in gated(pieces(3, log), lambda: log.append("settled")):
        out.append(p)
        log.append(f"sent {p}")
    assert out == [0, 1, 2]
    assert log == ["read 0", "read 1", "sent 0", "read 2", "sent 1", "closed", "settled", "sent 2"]


def test_a_bad_verdict_keeps_the_last_piece_and_closes_the_source() -> None:
    log: list[str] = []

    def bad() -> None:
        raise BadShardError(4, "img_emb has NaN/Inf")

    sent = []
    with pytest.raises(BadShardError, match="shard 4: img_emb has NaN/Inf"):
        for p in gated(pieces(3, log), bad):
            sent.append(p)
    assert sent == [0, 1] and log[-1] == "closed"


def test_an_empty_source_still_waits_for_the_verdict_and_closing_early_closes_the_source() -> None:
    calls: list[str] = []
    assert list(gated(pieces(0, calls), lambda: calls.append("settled"))) == []
    assert calls == ["closed", "settled"]
    log: list[str] = []
    g = gated(pieces(5, log), lambda: log.append("settled"))
    assert next(g) == 0
    g.close()
    assert log == ["read 0", "read 1", "closed"]


def nan_shard(make_shards, row: int):  # type: ignore[no-untyped-def]
    src = make_shards([0], rows=1000, dim=16)
    p = src / "img_emb" / "img_emb_0.npy"
    img = np.load(p)
    img[row, 3] = np.nan
    write_npy(p, img)
    return ShardFiles.in_dir(src, 0)


def test_a_deferred_scan_passes_the_shard_and_names_its_nan_at_the_gate(make_shards) -> None:  # type: ignore[no-untyped-def]
    files = nan_shard(make_shards, 777)
    with ThreadPoolExecutor(max_workers=2) as pool:
        valid = validate_shard(files, 16, "fail-shard", pool)  # no raise: the scan's verdict comes later
        assert valid.scan is not None and len(valid.drop_rows) == 0
        with pytest.raises(BadShardError) as err:
            valid.settle()
    assert str(err.value) == "shard 0: img_emb has NaN/Inf in 1 row(s), first at row 777 (--on-nan fail-shard)"
    with pytest.raises(BadShardError, match="first at row 777"):  # the same line without a pool, at once
        validate_shard(files, 16, "fail-shard")


def test_skip_row_is_never_deferred_its_rows_are_known_before_sending(make_shards) -> None:  # type: ignore[no-untyped-def]
    """Under skip-row the dropped rows shape every segment's body (its row count comes first): scanned up front."""
    files = nan_shard(make_shards, 12)
    with ThreadPoolExecutor(max_workers=2) as pool:
        valid = validate_shard(files, 16, "skip-row", pool)
    assert valid.scan is None and valid.drop_rows.tolist() == [12]
    valid.settle()


def test_a_clean_shard_settles(make_shards, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_shards([0], rows=500, dim=16)
    with ThreadPoolExecutor(max_workers=2) as pool:
        valid = validate_shard(ShardFiles.in_dir(src, 0), 16, "fail-shard", pool)
        valid.settle()
    assert valid.rows == 500 and len(valid.drop_rows) == 0
