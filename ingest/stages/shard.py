"""Open one shard: check its three files agree, then read it as fixed-size batches.

A broken shard lands nothing. Every check but one runs before the first batch is produced; the NaN/Inf scan of
the two vector files (1 GB each for a LAION shard, a third of a second) may instead run while the shard's first
segments are sent (`defer_scan`, `--on-nan fail-shard` only): each segment then holds its last piece until the
scan's verdict (`ValidShard.settle`, `gated`), and a body cut before its end commits nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ingest.core.config import NanPolicy
from ingest.core.errors import BadShardError
from ingest.core.layout import LAION400M, Layout
from ingest.core.plan import TEXT_BYTES_PER_ROW, BatchPlan, SegmentPlan
from ingest.core.schema import STRING_COLUMNS, TableSchema, column_for, is_text
from ingest.stages.batch import build_batch
from ingest.stages.npy import NpyInfo, read_npy_header, read_rows, scan_nonfinite

SCAN_ROWS = 16_384

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ShardFiles:
    """The three files of shard `i` under a root, named by a layout (LAION-400M's by default)."""

    shard: int
    img: Path
    text: Path
    meta: Path

    @classmethod
    def in_dir(cls, root: Path, shard: int, layout: Layout = LAION400M) -> ShardFiles:
        img, text, meta = layout.relpaths(shard)
        return cls(shard=shard, img=root / img, text=root / text, meta=root / meta)

    def all(self) -> tuple[Path, Path, Path]:
        return (self.img, self.text, self.meta)


@dataclass(frozen=True)
class ValidShard:
    """A shard whose files passed every check; `drop_rows` are NaN/Inf rows skipped under `--on-nan skip-row`."""

    files: ShardFiles
    rows: int
    img: NpyInfo
    text: NpyInfo
    schema: TableSchema = field(default_factory=TableSchema)
    drop_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    text_bytes: int = TEXT_BYTES_PER_ROW
    """Text bytes a row (url, caption, NSFW, string extras) in the shard's heaviest scan window: sizes segments."""
    scan: NanScan | None = None
    """The NaN/Inf scan still running (validate_shard's `defer_scan`): no segment may end before `settle`."""
    footer: pq.FileMetaData | None = None
    """The parquet footer, parsed once: each segment's reader opens the file with it (2.5 ms a segment less)."""

    @property
    def shard(self) -> int:
        return self.files.shard

    def settle(self) -> None:
        """Wait for a deferred scan's verdict; raises BadShardError when it found NaN/Inf (or could not read)."""
        if self.scan is not None:
            self.scan.verdict()

    def expected_rows(self, plan: BatchPlan | SegmentPlan) -> int:
        """Rows of `plan` that will land (all of them unless some were dropped for NaN)."""
        if not len(self.drop_rows):
            return plan.rows
        lo, hi = np.searchsorted(self.drop_rows, [plan.start, plan.stop])
        return plan.rows - int(hi - lo)


def _open_parquet(files: ShardFiles) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(files.meta)
    except FileNotFoundError as exc:
        raise BadShardError(files.shard, f"metadata file missing: {files.meta}") from exc
    except (pa.ArrowException, OSError) as exc:
        raise BadShardError(files.shard, f"metadata {files.meta.name}: unreadable parquet ({exc})") from exc


def _text_bytes(batch: pa.RecordBatch) -> int:
    """Bytes of string values in one batch (what its texts add to a ClickHouse block, offsets aside)."""
    total = 0
    for arr in batch.columns:
        if is_text(arr.type):
            total += pc.sum(pc.binary_length(arr)).as_py() or 0
    return total


def _check_parquet(files: ShardFiles, pf: pq.ParquetFile, schema: TableSchema) -> tuple[int, int]:
    """Needed columns present with usable types, and every page of them decodes. Returns the rows decoded and
    the text bytes a row of the heaviest window (rounded up)."""
    names = set(pf.schema_arrow.names)
    missing = [c for c in schema.meta_columns if c not in names]
    if missing:
        raise BadShardError(files.shard, f"metadata {files.meta.name}: missing column(s) {', '.join(missing)}")
    for col in STRING_COLUMNS:
        t = pf.schema_arrow.field(col).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
            raise BadShardError(files.shard, f"metadata {files.meta.name}: column {col} has type {t}, not string")
    sim_type = pf.schema_arrow.field("similarity").type
    if not (pa.types.is_floating(sim_type) or pa.types.is_integer(sim_type) or pa.types.is_null(sim_type)):
        raise BadShardError(files.shard, f"metadata {files.meta.name}: column similarity has type {sim_type}")
    for extra in schema.extras:
        t = pf.schema_arrow.field(extra.name).type
        have = column_for(extra.name, t)
        if have is None or have.ch_type != extra.ch_type:
            raise BadShardError(
                files.shard,
                f"metadata {files.meta.name}: column {extra.name} has type {t}, the table has {extra.ch_type}",
            )
    columns = list(schema.meta_columns)
    decoded, heaviest = 0, 0
    try:
        for b in pf.iter_batches(batch_size=SCAN_ROWS, columns=columns):
            decoded += b.num_rows
            if b.num_rows:
                heaviest = max(heaviest, -(-_text_bytes(b) // b.num_rows))
    except (pa.ArrowException, OSError) as exc:
        raise BadShardError(files.shard, f"metadata {files.meta.name}: corrupt parquet ({exc})") from exc
    return decoded, heaviest


def validate_shard(
    files: ShardFiles, schema: TableSchema | int, on_nan: NanPolicy, defer_scan: Executor | None = None
) -> ValidShard:
    """Every check a shard must pass before any of its rows is sent; raises BadShardError naming the cause.

    With `defer_scan` (and fail-shard) the NaN/Inf scan starts on that pool once the parquet check passed and is
    left running: the shard's segments are sent meanwhile, each holding its last piece until `ValidShard.settle`
    (the scan took ~0.4 s of a 1M-row shard's first byte into a 26.9 server, bench/server26.py, while the server
    idled)."""
    if isinstance(schema, int):
        schema = TableSchema(schema)
    dim = schema.dim
    for label, path in (("img_emb", files.img), ("text_emb", files.text), ("metadata", files.meta)):
        if not path.exists():
            raise BadShardError(files.shard, f"{label} file missing: {path}")
    img = read_npy_header(files.img, files.shard, "img_emb", dim)
    txt = read_npy_header(files.text, files.shard, "text_emb", dim)
    pf = _open_parquet(files)
    meta_rows = pf.metadata.num_rows
    if img.rows != meta_rows:
        raise BadShardError(files.shard, f"img_emb row count {img.rows} != metadata {meta_rows}")
    if txt.rows != meta_rows:
        raise BadShardError(files.shard, f"text_emb row count {txt.rows} != metadata {meta_rows}")
    deferred: NanScan | None = None
    drop = np.empty(0, dtype=np.int64)
    if on_nan == "fail-shard" and defer_scan is not None:
        # the first byte waits for the parquet check alone: the scans start once it passed (they ran beside it
        # and slowed it by a third on two cores) and only the segments' ends wait for them
        text_bytes = _decoded_text_bytes(files, pf, schema)
        deferred = NanScan(files.shard, *(defer_scan.submit(scan_nonfinite, info) for info in (img, txt)))
    else:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="validate") as pool:  # numpy, pread drop the GIL
            scan = NanScan(files.shard, *(pool.submit(scan_nonfinite, info) for info in (img, txt)))
            try:
                text_bytes = _decoded_text_bytes(files, pf, schema)
            except BadShardError:
                scan.cancel()
                raise
            drop = scan.dropped(on_nan)
    return ValidShard(
        files=files,
        rows=meta_rows,
        img=img,
        text=txt,
        schema=schema,
        drop_rows=drop,
        text_bytes=text_bytes,
        scan=deferred,
        footer=pf.metadata,
    )


def _decoded_text_bytes(files: ShardFiles, pf: pq.ParquetFile, schema: TableSchema) -> int:
    """The parquet check (every page decodes, as many rows as the footer says); the heaviest window's text bytes."""
    decoded, text_bytes = _check_parquet(files, pf, schema)
    if decoded != pf.metadata.num_rows:
        raise BadShardError(
            files.shard, f"metadata {files.meta.name}: decoded {decoded} rows, footer says {pf.metadata.num_rows}"
        )
    return text_bytes


@dataclass(frozen=True)
class NanScan:
    """The NaN/Inf scans of a shard's two vector files, running on a pool."""

    shard: int
    img: Future[np.ndarray]
    text: Future[np.ndarray]

    def dropped(self, on_nan: NanPolicy) -> np.ndarray:
        """The rows holding NaN/Inf (sorted); under fail-shard any such row raises BadShardError instead."""
        bad_img, bad_txt = self.img.result(), self.text.result()
        drop = np.union1d(bad_img, bad_txt).astype(np.int64) if len(bad_img) or len(bad_txt) else bad_img
        if len(drop) and on_nan == "fail-shard":
            which = "img_emb" if len(bad_img) else "text_emb"
            first = int(bad_img[0] if len(bad_img) else bad_txt[0])
            raise BadShardError(
                self.shard, f"{which} has NaN/Inf in {len(drop)} row(s), first at row {first} (--on-nan fail-shard)"
            )
        return drop

    def verdict(self) -> None:
        """Pass, or BadShardError: NaN/Inf found (fail-shard), or the files could not be read to the end."""
        try:
            self.dropped("fail-shard")
        except OSError as exc:
            raise BadShardError(self.shard, f"read failed during validation ({exc})") from exc

    def cancel(self) -> None:
        self.img.cancel()
        self.text.cancel()


def gated(pieces: Generator[T, None, None], settle: Callable[[], None]) -> Generator[T, None, None]:
    """`pieces`, the last one held back until `settle()` returns: a body whose end depends on a verdict. Closing
    this closes `pieces` (its files) at once."""
    with contextlib.closing(pieces):
        held = next(pieces, None)
        if held is None:
            settle()
            return
        for piece in pieces:
            yield held
            held = piece
        settle()
        yield held


class MetaCursor:
    """Sequential reader of the metadata columns that hands out exact row ranges across row groups."""

    def __init__(self, shard: ValidShard, batch_rows: int, from_row: int = 0) -> None:
        """The shard's metadata columns from the row group holding `from_row` on (earlier groups are not decoded),
        the file opened with the footer validation parsed."""
        pf = pq.ParquetFile(shard.files.meta, metadata=shard.footer)
        groups, base = _groups_from(pf.metadata, from_row)
        self._it = pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=list(shard.schema.meta_columns))
        self._buf: list[pa.RecordBatch] = []
        self._buf_start = base
        self._buf_rows = 0

    def take(self, start: int, stop: int) -> pa.Table:
        while self._buf_start + self._buf_rows < stop:
            rb = next(self._it)
            self._buf.append(rb)
            self._buf_rows += rb.num_rows
            self._trim(start)
        table = pa.Table.from_batches(self._buf).slice(start - self._buf_start, stop - start)
        self._trim(stop)
        return table

    def _trim(self, upto: int) -> None:
        """Forget buffered batches that end at or before row `upto` (memory stays one batch or two)."""
        while self._buf and self._buf_start + self._buf[0].num_rows <= upto:
            self._buf_start += self._buf[0].num_rows
            self._buf_rows -= self._buf[0].num_rows
            self._buf.pop(0)


def _groups_from(meta: pq.FileMetaData, row: int) -> tuple[list[int], int]:
    """Row groups from the one holding `row` to the end, and the first row of that group."""
    base = 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if row < base + n:
            return list(range(g, meta.num_row_groups)), base
        base += n
    return [], base


def read_segment(shard: ValidShard, segment: SegmentPlan) -> Generator[pa.RecordBatch, None, None]:
    """Yield the segment's blocks, read from the shard's files (pread windows, parquet from the right row group).

    Every call reads afresh, so a retried insert re-reads its segment instead of anyone buffering it.
    """
    blocks = segment.blocks()
    cursor = MetaCursor(shard, segment.block_rows, segment.start)
    fd_img = os.open(shard.img.path, os.O_RDONLY)
    fd_txt = os.open(shard.text.path, os.O_RDONLY)
    try:
        for plan in blocks:
            yield _block(shard, plan, cursor, fd_img, fd_txt)
    finally:
        os.close(fd_img)
        os.close(fd_txt)


def _block(shard: ValidShard, plan: BatchPlan, cursor: MetaCursor, fd_img: int, fd_txt: int) -> pa.RecordBatch:
    meta = cursor.take(plan.start, plan.stop)
    img = read_rows(shard.img, plan.start, plan.stop, fd_img)
    txt = read_rows(shard.text, plan.start, plan.stop, fd_txt)
    drop = None
    if len(shard.drop_rows):
        lo, hi = np.searchsorted(shard.drop_rows, [plan.start, plan.stop])
        drop = shard.drop_rows[lo:hi] - plan.start
    return build_batch(plan, img, txt, meta, drop, shard.schema)


def read_batches(
    shard: ValidShard, plans: list[BatchPlan], batch_rows: int
) -> Generator[tuple[BatchPlan, pa.RecordBatch], None, None]:
    """Yield `(plan, batch)` for each plan (sorted by start); rows outside `plans` are read past, not built."""
    cursor = MetaCursor(shard, batch_rows)
    fd_img = os.open(shard.img.path, os.O_RDONLY)
    fd_txt = os.open(shard.text.path, os.O_RDONLY)
    try:
        for plan in sorted(plans, key=lambda p: p.start):
            yield plan, _block(shard, plan, cursor, fd_img, fd_txt)
    finally:
        os.close(fd_img)
        os.close(fd_txt)
