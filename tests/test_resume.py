"""kill -9 at any moment, any number of times, then one more run: the table equals the source exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cli_run import cli
from exact import assert_table_equals, chdb_table, expected_rows


def done_segments(ledger: Path) -> int:
    """Segments the ledger lists as landed (complete shards count all their segments)."""
    try:
        doc = json.loads(ledger.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    total = 0
    for st in doc["shards"].values():
        if st["complete"]:
            total += -(-st["rows"] // st["segment_rows"])
        else:
            total += sum(hi - lo + 1 for lo, hi in st["done"])
    return total


def start_run(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ingest", "run", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )


def kill_when(proc: subprocess.Popen[bytes], ledger: Path, reached: int, timeout: float = 60) -> int:
    """SIGKILL the run once the ledger shows `reached` segments (or right away if reached <= 0); return done."""
    deadline = time.monotonic() + timeout
    while reached > 0 and done_segments(ledger) < reached and proc.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return done_segments(ledger)


def run_args(src: Path, db: Path, ledger: Path, spec: str = "0-2") -> list[str]:
    """3 shards of 12,000 rows in 500-row segments of two 250-row blocks: 72 segments, so kills land while
    inserts run (and mid-segment)."""
    return ["--source", str(src), "--shards", spec, "--target", f"chdb:{db}", "--dim", "128", "--batch-rows", "250",
            "--segment-rows", "500", "--no-progress", "--state", str(ledger)]  # fmt: skip


def assert_no_partial_segment(db: Path, segment_rows: int = 500) -> None:
    """Right after a kill -9, every segment's id range holds all of its rows or none."""
    from chdb import session

    s = session.Session(str(db))
    try:
        raw = s.query(
            f"SELECT intDiv(id % 10000000, {segment_rows}) + 100 * intDiv(id, 10000000) AS seg, count() AS n "
            "FROM laion GROUP BY seg HAVING n != " + str(segment_rows),
            "CSV",
        ).bytes()
    except Exception as exc:  # killed before the table was created
        if "UNKNOWN_TABLE" not in str(exc) and "doesn't exist" not in str(exc):
            raise
        raw = b""
    finally:
        s.close()
    assert raw.strip() == b"", f"segments half-present after a kill: {raw[:200]!r}"


def test_kill_nine_repeatedly_then_resume_is_exact(make_shards, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_shards([0, 1, 2], rows=12_000, dim=128)
    db, ledger = tmp_path / "db", tmp_path / "ledger.json"
    args = run_args(src, db, ledger)
    # 72 segments: kill during start-up, then at rising points of the ledger, i.e. while inserts are running
    seen = [kill_when(start_run(args), ledger, 0)]
    for target in (5, 20, 40, 60):
        proc = start_run(args)
        time.sleep(0.05)
        seen.append(kill_when(proc, ledger, target))
        assert_no_partial_segment(db)
    assert max(seen) > 0, "the kills never let a segment land: test did not exercise resume"
    res = cli("run", *args)
    assert res.returncode == 0, res.stderr
    assert_table_equals(chdb_table(db), expected_rows(src, [0, 1, 2]))


def test_resume_with_lost_ledger_and_partial_range(make_shards, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A range holding only some of a segment's rows (a torn insert) is deleted and re-inserted, not duplicated."""
    src = make_shards([0], rows=2000, dim=16)
    db, ledger = tmp_path / "db", tmp_path / "ledger.json"
    args = [
        "--source",
        str(src),
        "--shards",
        "0",
        "--target",
        f"chdb:{db}",
        "--dim",
        "16",
        "--batch-rows",
        "250",
        "--segment-rows",
        "500",
        "--no-progress",
        "--state",
        str(ledger),
    ]
    assert cli("run", *args).returncode == 0
    from chdb import session

    s = session.Session(str(db))
    s.query("ALTER TABLE laion DELETE WHERE id >= 700 AND id < 1000 SETTINGS mutations_sync = 2")  # segment 1 torn
    s.query("ALTER TABLE laion DELETE WHERE id >= 1500 SETTINGS mutations_sync = 2")  # segment 3 gone
    s.close()
    ledger.unlink()
    res = cli("run", *args)
    assert res.returncode == 0, res.stderr
    assert "replacing the range" in res.stderr
    assert "1,000 rows inserted" in res.stdout  # segments 1 and 3 again, not more
    assert_table_equals(chdb_table(db), expected_rows(src, [0]))


def test_sigterm_is_an_ordered_stop(make_shards, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_shards([0, 1, 2], rows=12_000, dim=128)
    db, ledger = tmp_path / "db", tmp_path / "ledger.json"
    args = run_args(src, db, ledger)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    while done_segments(ledger) < 10 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "SIGTERM" in err and "Traceback" not in err
    assert "interrupted:" in out or "done:" in out  # it may have been finishing anyway
    landed = done_segments(ledger)
    assert landed >= 10
    # a Kubernetes Job asks for a retriable code when a stop leaves shards unfinished
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", "run", *args, "--interrupt-exit-code", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    while done_segments(ledger) < landed + 5 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    if "interrupted:" in out:
        assert proc.returncode == 4, err
    res = cli("run", *args)
    assert res.returncode == 0, res.stderr
    assert_table_equals(chdb_table(db), expected_rows(src, [0, 1, 2]))


def test_second_process_on_same_chdb_dir_is_refused(make_shards, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shards = list(range(10))  # enough left after the first segment that the first run still holds the directory
    src = make_shards(shards, rows=20_000, dim=128)
    db, ledger = tmp_path / "db", tmp_path / "ledger.json"
    args = run_args(src, db, ledger, spec="0-9")
    first = start_run(args)
    try:
        while done_segments(ledger) < 1 and first.poll() is None:
            time.sleep(0.02)
        res = cli("run", *args)
        assert res.returncode == 2
        assert f"chdb data directory {db} is in use by another process (pid {first.pid})" in res.stderr
        assert "Traceback" not in res.stderr
    finally:
        first.wait(timeout=120)
    assert first.returncode == 0
    assert_table_equals(chdb_table(db), expected_rows(src, shards))
