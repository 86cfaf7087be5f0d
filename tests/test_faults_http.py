"""Faults against each real server (18.16 and 26.9): kill -9 of the ingester, and of the server itself mid-run."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from chdb_server import start_ch26
from cli_run import cli
from exact import assert_table_equals, expected_rows, server_table
from server_fixtures import SERVERS, start_clickhouse
from test_resume import done_segments, kill_when, start_run


def run_args(src: Path, handle: Any, db: str, ledger: Path, *extra: str) -> list[str]:
    return [
        "--source",
        str(src),
        "--shards",
        "0-2",
        "--target",
        handle.http_url,
        "--database",
        db,
        "--dim",
        "128",
        "--batch-rows",
        "250",
        "--segment-rows",
        "500",
        "--no-progress",
        "--state",
        str(ledger),
        *extra,
    ]


def assert_no_partial_segment(handle: Any, db: str, segment_rows: int = 500) -> None:
    """Right after a kill -9, every segment's id range holds all of its rows or none: a cut commits nothing."""
    try:
        raw = handle.query(
            f"SELECT intDiv(id, 10000000) AS shard, intDiv(id % 10000000, {segment_rows}) AS seg, count() AS n "
            f"FROM {db}.laion GROUP BY shard, seg FORMAT TSV"
        )
    except RuntimeError as exc:
        if "doesn't exist" in str(exc):
            return  # killed before the table was created
        raise
    counts = [line.split("\t") for line in raw.decode().splitlines()]
    partial = [c for c in counts if int(c[2]) != segment_rows]
    assert not partial, f"segments half-present after a kill: {partial}"


def test_kill_nine_ingester_repeatedly_http(make_shards: Any, server: Any, server_db: str, tmp_path: Path) -> None:
    src = make_shards([0, 1, 2], rows=12_000, dim=128)
    ledger = tmp_path / "ledger.json"
    args = run_args(src, server, server_db, ledger)
    seen = [kill_when(start_run(args), ledger, 0)]
    for target in (5, 20, 40, 60):
        seen.append(kill_when(start_run(args), ledger, target))
        assert_no_partial_segment(server, server_db)
    assert max(seen) > 0
    res = cli("run", *args)
    assert res.returncode == 0, res.stderr
    assert_table_equals(server_table(server, server_db), expected_rows(src, [0, 1, 2]))


@pytest.mark.parametrize("version", SERVERS)
def test_server_killed_and_restarted_mid_run(make_shards: Any, tmp_path: Path, version: str) -> None:
    """SIGKILL the server while segments are being inserted, bring it back on its data dir 3 s later: exit 0,
    exact table. A server of its own (never the session's), started and stopped here by pid."""
    handle: Any = start_clickhouse(tmp_path / "ch") if version == "18.16" else start_ch26(tmp_path / "ch26")
    try:
        handle.query("CREATE DATABASE faults")
        src = make_shards([0, 1, 2], rows=12_000, dim=128)
        ledger = tmp_path / "ledger.json"
        args = run_args(src, handle, "faults", ledger, "--max-retries", "20", "--retry-max-seconds", "2")
        proc = subprocess.Popen(
            [sys.executable, "-m", "ingest", "run", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        outage = {"killed_at": -1}

        def kill_and_restart() -> None:
            while done_segments(ledger) < 30 and proc.poll() is None:
                time.sleep(0.02)
            outage["killed_at"] = done_segments(ledger)
            handle.kill()
            time.sleep(3)
            handle.start()

        t = threading.Thread(target=kill_and_restart)
        t.start()
        _out, err = proc.communicate(timeout=240)
        t.join()
        assert outage["killed_at"] >= 30, "the run finished before the server was killed"
        assert proc.returncode == 0, err
        assert "retry" in err and "Traceback" not in err
        assert_table_equals(server_table(handle, "faults"), expected_rows(src, [0, 1, 2]))
    finally:
        handle.stop()
