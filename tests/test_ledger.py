"""The ledger writes on its own thread: a slow disk never holds the caller (the event loop), a failed write is
reported at the next barrier and the state it held is written again."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from ingest.core.errors import LedgerError
from ingest.load.ledger import Ledger


def test_a_held_fsync_never_holds_the_caller_and_flush_writes_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    real_fsync = os.fsync
    writers: set[threading.Thread] = set()

    def held_fsync(fd: int) -> None:
        if threading.current_thread() is not threading.main_thread():
            writers.add(threading.current_thread())
            assert gate.wait(30), "the test never released the writer"
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", held_fsync)
    path = tmp_path / "ledger.json"
    ledger = Ledger(path, "default.laion", flush_interval=0)
    ledger.start_shard(0, 100, 10)  # its write is handed to the writer, which hangs in fsync
    for index in range(10):
        ledger.mark_segment(0, index)  # returns although the write in flight hangs
    ledger.complete_shard(0)
    assert not path.exists()  # the first write is still held before its rename
    gate.set()
    ledger.flush()
    doc = json.loads(path.read_text())
    assert doc["shards"]["0"] == {"rows": 100, "segment_rows": 10, "done": [], "complete": True}
    assert writers and not any(t.is_alive() for t in writers)  # it wrote on its own thread; flush let it go


def test_a_failed_write_is_reported_at_flush_and_written_again(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the ledger's directory should be")
    ledger = Ledger(blocker / "ledger.json", "default.laion", flush_interval=0)
    ledger.start_shard(0, 100, 10)  # handed to the writer, which fails
    with pytest.raises(LedgerError, match=r"cannot write ledger .*ledger\.json"):
        ledger.flush()
    blocker.unlink()
    ledger.flush()
    doc = json.loads((blocker / "ledger.json").read_text())
    assert doc["shards"]["0"] == {"rows": 100, "segment_rows": 10, "done": [], "complete": False}
