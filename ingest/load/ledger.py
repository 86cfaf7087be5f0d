"""What landed, per shard and segment, in a small JSON file written atomically (temp, fsync, rename).

Writes while a run goes on happen on the ledger's own writer thread, never on the caller's (the event loop): an
fsync on a disk busy with the server's parts took up to 76 ms, and every socket of the run stalled meanwhile.
`flush()` is the barrier: it waits for the write in flight and writes what is left, on the caller's thread.

The ledger is a fast path, not the source of truth: a segment it does not list as done is counted in the target
before it is inserted, so a lost or stale ledger can cost a few queries but never a duplicate or a missing row.

Per shard it keeps `rows`, `segment_rows` (the cut), `done` (segment indexes as [first, last] ranges) and
`complete`. A ledger written before segments existed (`batch_rows`, batch indexes) is read gracefully: its
complete shards stay complete, its partial `done` lists are dropped (those shards are reconciled by counting).
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ingest.core.errors import LedgerError

FORMAT_VERSION = 2


@dataclass
class ShardState:
    rows: int = 0
    segment_rows: int = 0
    """Rows per segment of the cut `done` refers to (0: unknown, e.g. a version-1 ledger)."""
    done: set[int] = field(default_factory=set)
    complete: bool = False


def _ranges(values: set[int]) -> list[list[int]]:
    """{0,1,2,5} → [[0,2],[5,5]]: compact for long shards."""
    out: list[list[int]] = []
    for v in sorted(values):
        if out and out[-1][1] == v - 1:
            out[-1][1] = v
        else:
            out.append([v, v])
    return out


def _unranges(ranges: list[list[int]]) -> set[int]:
    return {v for lo, hi in ranges for v in range(lo, hi + 1)}


class Ledger:
    """Per-table resume state. Not thread-safe: used from the event loop only."""

    def __init__(self, path: Path, table_key: str, flush_interval: float = 0.5) -> None:
        self.path = path
        self.table_key = table_key
        self.shards: dict[int, ShardState] = {}
        self.quarantined: dict[int, str] = {}
        self._dirty = False
        self._last_flush = 0.0
        self._interval = flush_interval
        self._writer: ThreadPoolExecutor | None = None
        self._writing: Future[None] | None = None

    @classmethod
    def load(cls, path: Path, table_key: str) -> Ledger:
        ledger = cls(path, table_key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return ledger
        except OSError as exc:
            raise LedgerError(f"cannot read ledger {path}: {exc.strerror}") from exc
        try:
            doc: dict[str, Any] = orjson.loads(raw)
            if doc.get("table") != table_key:
                raise LedgerError(f"ledger {path} belongs to table {doc.get('table')}, not {table_key}")
            for key, st in doc.get("shards", {}).items():
                segment_rows = int(st.get("segment_rows", 0))  # absent in version 1: batch indexes, not segments
                ledger.shards[int(key)] = ShardState(
                    rows=int(st["rows"]),
                    segment_rows=segment_rows,
                    done=_unranges(st["done"]) if segment_rows else set(),
                    complete=bool(st["complete"]),
                )
            ledger.quarantined = {int(k): str(v) for k, v in doc.get("quarantined", {}).items()}
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise LedgerError(f"ledger {path} is unreadable ({exc}); move it away to rebuild from the target") from exc
        return ledger

    def is_complete(self, shard: int) -> bool:
        st = self.shards.get(shard)
        return st is not None and st.complete

    def done_segments(self, shard: int, rows: int, segment_rows: int) -> set[int]:
        """Segments known landed; empty when the shard was cut differently before (then everything is counted)."""
        st = self.shards.get(shard)
        if st is None or st.rows != rows or st.segment_rows != segment_rows:
            return set()
        return set(st.done)

    def start_shard(self, shard: int, rows: int, segment_rows: int) -> None:
        st = self.shards.get(shard)
        if st is None or st.rows != rows or st.segment_rows != segment_rows:
            self.shards[shard] = ShardState(rows=rows, segment_rows=segment_rows)
        self.quarantined.pop(shard, None)
        self._touch()

    def mark_segment(self, shard: int, index: int) -> None:
        self.shards[shard].done.add(index)
        self._touch()

    def complete_shard(self, shard: int) -> None:
        st = self.shards[shard]
        st.complete = True
        st.done = set()
        self._touch(now=True)

    def quarantine(self, shard: int, reason: str) -> None:
        self.quarantined[shard] = reason
        self.shards.pop(shard, None)
        self._touch(now=True)

    def _touch(self, now: bool = False) -> None:
        """Mark dirty; hand a snapshot to the writer thread when due (`now`: a shard's end) and none is in flight."""
        self._dirty = True
        if self._writing is not None:
            if not self._writing.done():
                return  # the next touch after it, or flush(), writes the rest
            self._settle()
        if now or time.monotonic() - self._last_flush >= self._interval:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
            self._writing = self._writer.submit(self._write, self._snapshot())

    def _settle(self) -> None:
        """Wait for the write in flight; its failure is ours (the state it held is written again)."""
        writing, self._writing = self._writing, None
        if writing is None:
            return
        try:
            writing.result()
        except LedgerError:
            self._dirty = True
            raise

    def flush(self) -> None:
        """Everything written and fsynced when this returns (waits for the writer thread, then lets it go)."""
        try:
            self._settle()
        finally:
            if self._writer is not None:
                self._writer.shutdown(wait=True)
                self._writer = None
        if self._dirty:
            self._write(self._snapshot())

    def _snapshot(self) -> bytes:
        """The ledger as JSON bytes, taken on the caller's thread (the only one that changes the state)."""
        self._dirty = False
        self._last_flush = time.monotonic()
        doc = {
            "version": FORMAT_VERSION,
            "table": self.table_key,
            "shards": {
                str(k): {
                    "rows": v.rows,
                    "segment_rows": v.segment_rows,
                    "done": _ranges(v.done),
                    "complete": v.complete,
                }
                for k, v in sorted(self.shards.items())
            },
            "quarantined": {str(k): v for k, v in sorted(self.quarantined.items())},
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2)

    def _write(self, data: bytes) -> None:
        """Write temp file, fsync, rename, fsync the directory: a crash leaves the old or the new ledger."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
            with contextlib.suppress(OSError):
                dfd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as exc:
            raise LedgerError(f"cannot write ledger {self.path}: {exc.strerror}") from exc


def default_ledger_path(target_kind: str, target_path: str, base_url: str, table_key: str) -> Path:
    """Next to the target: inside the chdb directory, or under ./laion-state for a server."""
    if target_kind == "chdb":
        return Path(target_path) / "laion-ingest-state" / f"{table_key}.ledger.json"
    safe = base_url.replace("://", "_").replace(":", "_").replace("/", "_").strip("_")
    return Path("laion-state") / safe / f"{table_key}.ledger.json"
