"""End to end into the embedded target: rows read back from chdb equal the source files exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from cli_run import cli
from exact import assert_table_equals, chdb_table, expected_rows

from ingest.stages.synth import write_npy


def run(src: Path, db: Path, *extra: str, shards: str = "0-2") -> str:
    res = cli("run", "--source", str(src), "--shards", shards, "--target", f"chdb:{db}", "--no-progress", *extra)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    return res.stdout


def test_three_shards_byte_exact(make_shards, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_shards([0, 1, 2], rows=5000)
    out = run(src, tmp_path / "db")
    assert "done: 3 shards, 15,000 rows inserted" in out
    assert_table_equals(chdb_table(tmp_path / "db"), expected_rows(src, [0, 1, 2]))


def test_rerun_does_not_duplicate_even_without_ledger(make_shards, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_shards([0, 1], rows=3000)
    db = tmp_path / "db"
    run(src, db, shards="0-1")
    second = run(src, db, shards="0-1")
    assert "0 rows inserted" in second
    # a lost ledger must not cost a duplicate either: the target is counted before inserting
    for ledger in (db / "laion-ingest-state").glob("*.json"):
        ledger.unlink()
    third = run(
        src,
        db,
        shards="0-1",
    )
    assert "0 rows inserted" in third and "6,000 rows already present" in third
    assert_table_equals(chdb_table(db), expected_rows(src, [0, 1]))


def test_batch_boundaries_odd_sizes(make_shards, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    make_shards([0], rows=10_001, root=src)
    make_shards([1], rows=1, root=src)
    make_shards([2], rows=0, root=src)
    make_shards([3], rows=4096, root=src)
    db = tmp_path / "db"
    out = run(src, db, "--batch-rows", "4096", shards="0-3")
    assert "done: 4 shards, 14,098 rows inserted" in out
    assert_table_equals(chdb_table(db), expected_rows(src, [0, 1, 2, 3]))


def test_float32_npy_and_other_dim(make_shards, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_shards([0, 1], rows=700, dim=64, dtype="float32")
    assert np.load(src / "img_emb" / "img_emb_0.npy").dtype == np.float32
    db = tmp_path / "db"
    run(src, db, "--dim", "64", "--batch-rows", "100", shards="0-1")
    assert_table_equals(chdb_table(db), expected_rows(src, [0, 1]))


def test_odd_but_valid_values(make_shards, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Null everything, 200 kB captions, tabs, newlines, quotes, backslashes, emoji: loaded byte-exact."""
    src = make_shards([0], rows=6, dim=8)
    meta = pq.read_table(src / "metadata" / "metadata_0.parquet")
    caps = [None, "x" * 200_000, "tab\there\nnew line \\ back", "\"double\" 'single' ``", "🤖 ünï 東京", ""]
    urls = [None, "", "https://a/b?c='d'&e=\"f\"", "u\tv", "ü", None]
    meta = meta.set_column(meta.column_names.index("caption"), "caption", pa.array(caps, pa.string()))
    meta = meta.set_column(meta.column_names.index("url"), "url", pa.array(urls, pa.string()))
    meta = meta.set_column(meta.column_names.index("NSFW"), "NSFW", pa.array([None] * 6, pa.string()))
    pq.write_table(meta, src / "metadata" / "metadata_0.parquet")
    db = tmp_path / "db"
    run(src, db, "--dim", "8", shards="0")
    got = chdb_table(db)
    assert got.column("caption").to_pylist()[1] == "x" * 200_000
    assert_table_equals(got, expected_rows(src, [0]))


def test_skip_row_policy_drops_only_nan_rows(make_shards, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_shards([0], rows=50, dim=8)
    img = np.load(src / "img_emb" / "img_emb_0.npy")
    img[7, 3] = np.nan
    img[30, 0] = np.inf
    write_npy(src / "img_emb" / "img_emb_0.npy", img)
    db = tmp_path / "db"
    run(src, db, "--dim", "8", "--on-nan", "skip-row", "--batch-rows", "16", shards="0")
    got = chdb_table(db)
    ids = got.column("id").to_pylist()
    assert len(ids) == 48 and 7 not in ids and 30 not in ids
    # re-running must treat the short batches as complete, not re-insert them
    out = run(src, db, "--dim", "8", "--on-nan", "skip-row", "--batch-rows", "16", shards="0")
    assert "0 rows inserted" in out
    assert chdb_table(db).num_rows == 48


def test_an_aborted_body_unblocks_an_engine_that_opens_the_pipe_late(tmp_path: Path) -> None:
    """A body cancelled before the engine opened its end of the pipe (a run stopped with no drain time): the
    engine's open() must still find a writer and an unparsable block, or its insert thread waits for ever and
    keeps the process up (seen under load: the stopped run never exited)."""
    import asyncio
    import os
    import threading

    from ingest.clickhouse.wire import ABORT_BLOCK
    from ingest.sinks.fifo_body import abort_statement

    path = tmp_path / "segment.native"
    os.mkfifo(path, 0o600)
    opened = threading.Event()

    def late_engine() -> bytes:
        opened.wait(10)  # opens only after the abort began, as a statement still queued would
        with path.open("rb") as pipe:  # blocks for ever when nobody holds the writing end
            return pipe.read(len(ABORT_BLOCK))

    async def main() -> bytes:
        statement = asyncio.get_running_loop().run_in_executor(None, late_engine)
        aborting = asyncio.ensure_future(abort_statement(path, statement))
        await asyncio.sleep(0.2)
        opened.set()
        await asyncio.wait_for(aborting, 10)
        return statement.result()

    assert asyncio.run(main()) == ABORT_BLOCK
