"""Broken inputs seen in the wild: each bad shard is named with its cause, lands nothing, others still load."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from cli_run import cli
from exact import assert_table_equals, chdb_table, expected_rows, server_table

from ingest.stages.synth import write_npy


def truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - keep])


def break_truncated(src: Path) -> None:
    truncate(src / "img_emb" / "img_emb_1.npy", 1000)


def break_count(src: Path) -> None:
    txt = np.load(src / "text_emb" / "text_emb_1.npy")
    write_npy(src / "text_emb" / "text_emb_1.npy", txt[:-5])


def break_dim(src: Path) -> None:
    img = np.load(src / "img_emb" / "img_emb_1.npy")
    write_npy(src / "img_emb" / "img_emb_1.npy", img[:, :8])


def break_magic(src: Path) -> None:
    p = src / "img_emb" / "img_emb_1.npy"
    p.write_bytes(b"GARBAGE!" + p.read_bytes()[8:])


def break_dtype(src: Path) -> None:
    img = np.load(src / "img_emb" / "img_emb_1.npy")
    write_npy(src / "img_emb" / "img_emb_1.npy", img.astype(np.float64))


def break_missing(src: Path) -> None:
    (src / "metadata" / "metadata_1.parquet").unlink()


def break_nan(src: Path) -> None:
    txt = np.load(src / "text_emb" / "text_emb_1.npy")
    txt[123, 5] = np.nan
    write_npy(src / "text_emb" / "text_emb_1.npy", txt)


def break_parquet(src: Path) -> None:
    """Scribble over the caption column's pages of the second row group (footer intact)."""
    p = src / "metadata" / "metadata_1.parquet"
    md = pq.ParquetFile(p).metadata
    col = md.row_group(1).column(md.schema.to_arrow_schema().get_field_index("caption"))
    start = col.data_page_offset
    data = bytearray(p.read_bytes())
    data[start : start + col.total_compressed_size] = b"\xff" * col.total_compressed_size
    p.write_bytes(bytes(data))


def break_parquet_tail(src: Path) -> None:
    truncate(src / "metadata" / "metadata_1.parquet", 100)


def break_column(src: Path) -> None:
    p = src / "metadata" / "metadata_1.parquet"
    pq.write_table(pq.read_table(p).drop_columns(["caption"]), p)


CASES: list[tuple[Callable[[Path], None], str]] = [
    (break_truncated, "shard 1: img_emb img_emb_1.npy: truncated"),
    (break_count, "shard 1: text_emb row count 995 != metadata 1000"),
    (break_dim, "shard 1: img_emb img_emb_1.npy: dimension 8 != expected 16"),
    (break_magic, "shard 1: img_emb img_emb_1.npy: not an .npy file (bad magic)"),
    (break_dtype, "shard 1: img_emb img_emb_1.npy: dtype <f8 not supported"),
    (break_missing, "shard 1: metadata file missing"),
    (break_nan, "shard 1: text_emb has NaN/Inf in 1 row(s), first at row 123"),
    (break_parquet, "shard 1: metadata metadata_1.parquet:"),
    (break_parquet_tail, "shard 1: metadata metadata_1.parquet: unreadable parquet"),
    (break_column, "shard 1: metadata metadata_1.parquet: missing column(s) caption"),
]


@pytest.mark.parametrize(("breaker", "message"), CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_shard_is_quarantined(
    make_shards,
    tmp_path: Path,
    breaker: Callable[[Path], None],
    message: str,  # type: ignore[no-untyped-def]
) -> None:
    src = make_shards([0, 1, 2], rows=1000, dim=16, row_group_rows=300)
    breaker(src)
    db, report = tmp_path / "db", tmp_path / "report.json"
    res = cli(
        "run",
        "--source",
        str(src),
        "--shards",
        "0-2",
        "--target",
        f"chdb:{db}",
        "--dim",
        "16",
        "--batch-rows",
        "256",
        "--no-progress",
        "--report",
        str(report),
    )
    assert res.returncode == 3, res.stderr
    assert message in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert "1 bad shard(s): 1" in res.stdout
    doc = json.loads(report.read_text())
    assert [q["shard"] for q in doc["quarantined"]] == [1]
    assert message.split(": ", 1)[1] in doc["quarantined"][0]["reason"]
    # nothing of shard 1, all of shards 0 and 2
    assert_table_equals(chdb_table(db), expected_rows(src, [0, 2]))


def break_nan_late(src: Path) -> None:
    """A NaN in the last segment: the shard's earlier segments must not land either."""
    txt = np.load(src / "text_emb" / "text_emb_1.npy")
    txt[950, 2] = np.inf
    write_npy(src / "text_emb" / "text_emb_1.npy", txt)


HTTP_CASES: list[tuple[Callable[[Path], None], str]] = [
    (break_truncated, "shard 1: img_emb img_emb_1.npy: truncated"),
    (break_nan_late, "shard 1: text_emb has NaN/Inf in 1 row(s), first at row 950"),
    (break_parquet, "shard 1: metadata metadata_1.parquet:"),
]


@pytest.mark.server
@pytest.mark.parametrize(("breaker", "message"), HTTP_CASES, ids=[c[0].__name__ for c in HTTP_CASES])
def test_bad_shard_is_quarantined_over_http(
    make_shards: Any, server: Any, server_db: str, tmp_path: Path, breaker: Callable[[Path], None], message: str
) -> None:
    """The same promise against each server, in 250-row segments (shard 1 is four INSERTs): the broken shard is
    named with its cause, none of its rows land, the others load exactly."""
    src = make_shards([0, 1, 2], rows=1000, dim=16, row_group_rows=300)
    breaker(src)
    report = tmp_path / "report.json"
    res = cli(
        "run", "--source", str(src), "--shards", "0-2", "--target", server.http_url, "--database", server_db,
        "--dim", "16", "--batch-rows", "125", "--segment-rows", "250", "--no-progress", "--report", str(report),
        "--state", str(tmp_path / "ledger.json"),
        env={"CLICKHOUSE_USER": "ingest", "CLICKHOUSE_PASSWORD": server.password},
    )  # fmt: skip
    assert res.returncode == 3, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert [q["shard"] for q in json.loads(report.read_text())["quarantined"]] == [1]
    assert_table_equals(server_table(server, server_db), expected_rows(src, [0, 2]))


STRIDE = 10_000_000
"""Ids of shard s start at s × STRIDE (ingest.core.plan.ID_STRIDE)."""


@pytest.mark.server
def test_a_shard_sent_before_its_nan_scan_ends_lands_nothing(
    make_shards: Any, server: Any, server_db: str, tmp_path: Path
) -> None:
    """The NaN/Inf scan runs while a shard's first segments are sent (--on-nan fail-shard). Shard 1's scan is
    slowed 4 s (tests/slow_scan_cli.py) and its NaN sits in its last segment: its segments reach their gate (all
    but their last piece sent) before the verdict, and polled from outside while the run goes, its id range never
    holds a row; then the run names the shard and the NaN, and shards 0 and 2 land exactly."""
    import subprocess
    import sys
    import time

    src = make_shards([0, 1, 2], rows=1000, dim=16, row_group_rows=300)
    break_nan_late(src)
    args = [
        "run", "--source", str(src), "--shards", "0-2", "--target", server.http_url, "--database", server_db,
        "--dim", "16", "--batch-rows", "125", "--segment-rows", "250", "--no-progress",
        "--state", str(tmp_path / "ledger.json"),
    ]  # fmt: skip
    env = {**os.environ, "CLICKHOUSE_USER": "ingest", "CLICKHOUSE_PASSWORD": server.password}
    script = Path(__file__).with_name("slow_scan_cli.py")
    proc = subprocess.Popen(
        [sys.executable, str(script), "4", "1", "--", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    landed: list[int] = []
    try:
        while proc.poll() is None:
            exists = f"SELECT count() FROM system.tables WHERE database = '{server_db}' AND name = 'laion'"
            if server.query(exists).decode().strip() == "1":
                shard1 = f"SELECT count() FROM `{server_db}`.laion WHERE id BETWEEN {STRIDE} AND {2 * STRIDE - 1}"
                landed.append(int(server.query(shard1).decode().strip() or 0))
            time.sleep(0.1)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err
    assert "shard 1: text_emb has NaN/Inf in 1 row(s), first at row 950" in err and "Traceback" not in err, err
    assert "gate: a segment of shard 1 waits for its scan" in err, err
    assert landed and max(landed) == 0, landed
    assert_table_equals(server_table(server, server_db), expected_rows(src, [0, 2]))


def test_a_shard_sent_before_its_nan_scan_ends_lands_nothing_in_chdb(make_shards: Any, tmp_path: Path) -> None:
    """The same race in the embedded engine (which no other process may open while the run goes, so no poll):
    shard 1's segments reach their gate before the verdict, and none of its rows is in the table after."""
    import subprocess
    import sys

    src = make_shards([0, 1, 2], rows=1000, dim=16, row_group_rows=300)
    break_nan_late(src)
    db = tmp_path / "db"
    script = Path(__file__).with_name("slow_scan_cli.py")
    res = subprocess.run(
        [sys.executable, str(script), "2", "1", "--", "run", "--source", str(src), "--shards", "0-2",
         "--target", f"chdb:{db}", "--dim", "16", "--batch-rows", "125", "--segment-rows", "250", "--no-progress"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert res.returncode == 3, res.stderr
    assert "shard 1: text_emb has NaN/Inf in 1 row(s), first at row 950" in res.stderr, res.stderr
    assert "gate: a segment of shard 1 waits for its scan" in res.stderr and "Traceback" not in res.stderr
    assert_table_equals(chdb_table(db), expected_rows(src, [0, 2]))


def test_a_scan_that_breaks_ends_the_run_with_one_line_and_the_rerun_is_exact(make_shards: Any, tmp_path: Path) -> None:
    """A bug in the deferred NaN/Inf scan (not a bad file: RuntimeError, via tests/slow_scan_cli.py) surfaces at
    shard 1's gates inside the read pool: the run must end (it once waited on the segment's queue until killed)
    with one internal-error line and exit 1, none of shard 1's rows landed; a plain rerun then loads all three
    shards exactly."""
    import subprocess
    import sys

    src = make_shards([0, 1, 2], rows=1000, dim=16, row_group_rows=300)
    db = tmp_path / "db"
    args = [
        "run", "--source", str(src), "--shards", "0-2", "--target", f"chdb:{db}", "--dim", "16", "--batch-rows", "125",
        "--segment-rows", "250", "--no-progress", "--state", str(tmp_path / "ledger.json"),
    ]  # fmt: skip
    script = Path(__file__).with_name("slow_scan_cli.py")
    res = subprocess.run(
        [sys.executable, str(script), "fail", "1", "--", *args],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    assert "internal error: RuntimeError: scan of" in res.stderr and "Traceback" not in res.stderr, res.stderr
    ids = chdb_table(db).column("id").to_numpy() if db.exists() else np.empty(0, dtype=np.int64)
    assert not ((ids >= STRIDE) & (ids < 2 * STRIDE)).any()
    rerun = cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert_table_equals(chdb_table(db), expected_rows(src, [0, 1, 2]))
