"""Merges deferred on a server (ingest/sinks/merge_hold.py; a run's default), on 18.16 and 26.9: the table's merges
held while a run loads it, lifted for a torn range's delete, resumed past the part bound and at the end; what a
run killed while holding them left stopped, resumed by the next run; `--merges during` keeps them; a refused stop
does not stop a load; refused on a cluster."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from cli_run import cli
from cpu_load import busy_cores
from exact import assert_table_equals, expected_rows, server_table
from server_fixtures import servers_with
from sink_batches import small_batch
from test_faults_load import KILLABLE_ROWS, load_args, start, wait_for_rows

from ingest.core.config import TargetConfig
from ingest.core.errors import TargetError
from ingest.core.ids import TableRef
from ingest.core.plan import plan_segments
from ingest.core.schema import TableSchema
from ingest.core.target import parse_target
from ingest.sinks.http import HttpSink

BLOCK = 500
DIM = 16
NO_GRANTS_1816 = "18.16 has no GRANTs (access control came in 20.4): a user there cannot be denied SYSTEM alone"
MERGES_STOPPED = ("ancel", "ABORTED")
"""What OPTIMIZE answers while the table's merges are stopped ("Cancelled merging parts" / ABORTED)."""


async def _one(first: int) -> AsyncIterator[pa.RecordBatch]:
    yield small_batch(first, BLOCK, DIM)


def optimize(server: Any, db: str) -> str:
    """OPTIMIZE … FINAL: "" when it ran, else the server's error."""
    try:
        server.query(f"OPTIMIZE TABLE {db}.laion FINAL")
    except RuntimeError as exc:
        return str(exc)
    return ""


@pytest.mark.server
def test_merges_held_while_loading_lifted_for_a_delete_and_resumed_past_the_bound(server: Any, server_db: str) -> None:
    ref = TableRef(server_db, "laion")
    segs = plan_segments(0, 6 * BLOCK, BLOCK, BLOCK, dim=DIM)
    cfg = TargetConfig(
        spec=parse_target(server.http_url), database=server_db, merges="deferred", schema=TableSchema(DIM)
    )

    async def go() -> tuple[int, str, int, str, str, str]:
        sink = HttpSink(cfg)
        try:
            await sink.connect()
            await sink.ensure_table(ref)
            assert sink.merge_hold is not None
            for seg in segs[:2]:
                await sink.insert(ref, seg, _one(seg.start), None)
            bound = sink.merge_hold.limit
            held = optimize(server, server_db)
            await sink.delete_range(ref, segs[1].first_id, segs[1].last_id)  # a mutation: merges lifted around it
            left = await sink.count_range(ref, segs[1].first_id, segs[1].last_id)
            still = optimize(server, server_db)
            sink.merge_hold.limit = 3
            for seg in segs[2:]:
                await sink.insert(ref, seg, _one(seg.start), None)
            resumed = optimize(server, server_db)  # over 3 parts before the last insert: merges resumed
            return bound, held, left, still, resumed, ",".join(r.key for r in sink.merge_hold.stopped)
        finally:
            await sink.close()

    bound, held, left, still, resumed, stopped = asyncio.run(go())
    assert bound == (75 if getattr(server, "version", "18.16") == "18.16" else 300)  # parts_to_delay_insert / 2
    assert any(s in held for s in MERGES_STOPPED), held
    assert left == 0 and any(s in still for s in MERGES_STOPPED), still
    assert resumed == "" and stopped == ""
    n = int(server.query(f"SELECT count() FROM {server_db}.laion"))
    assert n == 5 * BLOCK  # segment 1 deleted, the rest landed once


@pytest.mark.server
def test_a_run_killed_holding_merges_leaves_them_stopped_and_the_next_run_resumes_them(
    make_shards: Any, server: Any, server_db: str, tmp_path: Path
) -> None:
    """kill -9 of a run (merges deferred: the default) at a random moment after its first rows land, both cores
    busy: the table's merges stay stopped (a server keeps the stop), the next run resumes them, exact table."""
    src = make_shards([0, 1, 2], rows=KILLABLE_ROWS, dim=128)
    args = load_args(src, server.http_url, server_db, tmp_path / "ledger.json", "0-2")
    with busy_cores(seconds=240):
        proc = start(args)
        try:
            assert wait_for_rows(server, server_db, proc), "no rows landed before the run ended"
            time.sleep(random.uniform(0.0, 0.3))
            assert proc.poll() is None, "the run finished before it was killed"
        finally:
            proc.kill()
            _, err = proc.communicate()
        held = optimize(server, server_db)
        rerun = subprocess.run([sys.executable, "-m", "ingest", *args], capture_output=True, text=True, timeout=300)
    if "resume now" in err:  # killed while exiting, after its own release (logged after it): the merges run
        assert held == "", held
    else:
        assert any(s in held for s in MERGES_STOPPED), held
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert optimize(server, server_db) == ""
    assert_table_equals(server_table(server, server_db), expected_rows(src, [0, 1, 2]))


@pytest.mark.server
@pytest.mark.parametrize("merges", [None, "during"])
def test_a_run_defers_merges_by_default_says_so_and_leaves_them_running(
    make_shards: Any, server: Any, server_db: str, merges: str | None
) -> None:
    src = make_shards([0, 1], rows=2000, dim=DIM)
    res = cli(
        "run", "--source", str(src), "--shards", "0-1", "--target", server.http_url, "--database", server_db,
        "--segment-rows", "1000", "--no-progress", *(["--merges", merges] if merges else []),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    said = f"{server_db}.laion: 4 parts; merges were deferred during the load and resume now"
    assert (said in res.stderr) == (merges is None), res.stderr
    assert optimize(server, server_db) == ""
    assert_table_equals(server_table(server, server_db), expected_rows(src, [0, 1]))


def test_merges_deferred_is_refused_on_a_cluster(make_shards: Any) -> None:
    src = make_shards([0], rows=100, dim=DIM)
    res = cli(
        "run", "--source", str(src), "--shards", "0", "--target", "http://127.0.0.1:9/", "--cluster", "two",
        "--merges", "deferred", "--no-progress",
    )  # fmt: skip
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "--merges deferred is for one server or the embedded target, not a --cluster" in res.stderr


def test_a_server_refusing_system_start_merges_does_not_stop_a_load() -> None:
    """heal() is a courtesy: a user without the SYSTEM privilege still loads (the refusal is not an error)."""
    from ingest.sinks.merge_hold import heal

    async def refused(sql: str) -> None:
        raise TargetError("Code: 497. DB::Exception: default: Not enough privileges. (ACCESS_DENIED)", 497)

    assert asyncio.run(heal(refused, TableRef("default", "laion"))) is False


def test_a_server_refusing_system_stop_merges_loads_with_merges(caplog: pytest.LogCaptureFixture) -> None:
    """Branch logic with an in-memory stand-in for the server (the refusal a user without SYSTEM gets): the first
    insert's stop is refused, said once, nothing counted as stopped, no later insert asks again."""
    from ingest.sinks.merge_hold import MergeHold

    asked: list[str] = []

    async def execute(sql: str) -> None:
        asked.append(sql)
        raise TargetError("Code: 497. DB::Exception: ingest: Not enough privileges. (ACCESS_DENIED)", 497)

    async def query(sql: str) -> list[dict[str, Any]]:
        return [{"value": "1000", "n": 1}]

    async def load() -> MergeHold:
        hold = MergeHold(execute, query)
        ref = TableRef("default", "laion")
        for _ in range(3):
            async with hold.inserting(ref):
                pass
        await hold.release()
        return hold

    with caplog.at_level("INFO", logger="ingest.sinks.merge_hold"):
        hold = asyncio.run(load())
    assert hold.stopped == frozenset()
    assert asked == ["SYSTEM STOP MERGES `default`.`laion`"], asked
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "background merges go on during the load (holding them failed: Code: 497" in said[0]


def test_parts_that_cannot_be_counted_give_the_merges_back() -> None:
    """Held, then the part count (the bound) fails: merges resume rather than stay stopped unwatched."""
    from ingest.sinks.merge_hold import MergeHold

    asked: list[str] = []

    async def execute(sql: str) -> None:
        asked.append(sql)

    async def query(sql: str) -> list[dict[str, Any]]:
        if "system.parts" in sql:
            raise TargetError("Code: 497. DB::Exception: ingest: Not enough privileges. (ACCESS_DENIED)", 497)
        return [{"value": "1000"}]

    async def load() -> MergeHold:
        hold = MergeHold(execute, query)
        ref = TableRef("default", "laion")
        async with hold.inserting(ref):
            assert hold.stopped == frozenset({ref})  # the first insert: stopped before it starts
        async with hold.inserting(ref):
            pass
        return hold

    assert asyncio.run(load()).stopped == frozenset()
    assert asked == ["SYSTEM STOP MERGES `default`.`laion`", "SYSTEM START MERGES `default`.`laion`"], asked


def test_merges_during_holds_nothing() -> None:
    from ingest.sinks.merge_hold import MergeHold

    async def never(sql: str) -> Any:
        raise AssertionError(f"asked {sql!r} under --merges during")

    async def load() -> MergeHold:
        hold = MergeHold(never, never, enabled=False)
        ref = TableRef("default", "laion")
        async with hold.inserting(ref):
            pass
        async with hold.lifted(ref):
            pass
        await hold.release()
        return hold

    assert asyncio.run(load()).stopped == frozenset()


@pytest.mark.server
@pytest.mark.parametrize("server", servers_with({"18.16": NO_GRANTS_1816}), indirect=True)
def test_a_user_without_system_loads_exact_with_merges_and_a_missing_grant_is_named(
    make_shards: Any, server: Any, server_db: str, tmp_path: Path
) -> None:
    """26.9's `loader` may create, insert and delete but not run SYSTEM: the default run says merges go on, and
    loads exact; the heal at open is refused quietly. Its `index` (no ALTER ADD INDEX grant) ends in one line
    naming the privilege, not "authentication failed" (a 403 with a code is ACCESS_DENIED, not a bad password)."""
    from chdb_server import LOADER_USER

    src = make_shards([0, 1], rows=2000, dim=DIM)
    res = cli(
        "run", "--source", str(src), "--shards", "0-1", "--target", server.http_url, "--database", server_db,
        "--segment-rows", "1000", "--no-progress", "--user", LOADER_USER, "--state", str(tmp_path / "ledger.json"),
        env={"CLICKHOUSE_PASSWORD": server.password},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"{server_db}.laion: background merges go on during the load (holding them failed: " in res.stderr
    assert "ACCESS_DENIED" in res.stderr and "merges were deferred" not in res.stderr, res.stderr
    assert_table_equals(server_table(server, server_db), expected_rows(src, [0, 1]))
    index = cli(
        "index", "--target", server.http_url, "--database", server_db, "--m", "8", "--ef-construction", "16",
        "--user", LOADER_USER, env={"CLICKHOUSE_PASSWORD": server.password},
    )  # fmt: skip
    lines = [line for line in index.stderr.splitlines() if line.strip()]
    assert index.returncode != 0 and len(lines) == 1, index.stderr
    assert "Not enough privileges" in lines[0] and "ACCESS_DENIED" in lines[0], lines
    assert "authentication failed" not in lines[0] and server.password not in index.stderr


def test_the_part_bound_is_counted_while_an_insert_runs_and_acted_on_once_it_landed() -> None:
    """Held merges: each later insert's part count runs beside it (not in the gap before it); over the bound, the
    merges resume once the insert landed. An insert that fails leaves the merges held (the count is dropped)."""
    from ingest.sinks.merge_hold import MergeHold

    asked: list[str] = []

    async def execute(sql: str) -> None:
        asked.append(sql)

    async def query(sql: str) -> list[dict[str, Any]]:
        if "system.parts" in sql:
            asked.append("parts counted")
            return [{"n": 5}]
        return [{"value": "1000"}]

    async def load() -> tuple[MergeHold, list[str], list[str]]:
        hold = MergeHold(execute, query, limit=3)
        ref = TableRef("default", "laion")
        async with hold.inserting(ref):
            pass
        with pytest.raises(RuntimeError):
            async with hold.inserting(ref):
                raise RuntimeError("the insert failed")
        failed = list(asked)
        async with hold.inserting(ref):
            asked.append("body sent")
            await asyncio.sleep(0.01)  # the server writes the part
            during = list(asked)
        return hold, failed, during

    hold, failed, during = asyncio.run(load())
    stop, start = "SYSTEM STOP MERGES `default`.`laion`", "SYSTEM START MERGES `default`.`laion`"
    assert failed == [stop]
    assert during == [stop, "body sent", "parts counted"]
    assert asked == [*during, start] and hold.stopped == frozenset()
