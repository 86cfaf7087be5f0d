"""`index --recall-target`: the whole command on real chdb (small sizes: 12,000 rows, 4,000-row samples, M ≤ 32),
`eval --plot`, and the daemon's scheduled re-materialize (the pure choice and sizing: tests/test_index_choice.py)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import pytest
from cli_run import cli, loaded_chdb, ok
from daemon_proc import DaemonProc
from exact import chdb_rows

from ingest.clickhouse.index_sql import create_scratch_sql, drop_table_sql, fill_scratch_sql, scratch_ref
from ingest.clickhouse.vector_sql import (
    vector_literal,
)
from ingest.core.config import TargetConfig
from ingest.core.errors import TargetError
from ingest.core.ids import TableRef
from ingest.core.target import parse_target
from ingest.sinks.chdb import ChdbSink
from ingest.stages.synth import SynthSpec, write_shard
from ingest.vector import tune_run
from ingest.vector.autoindex import merges_paused
from ingest.vector.graphs import GraphSize
from ingest.vector.tune import (
    BuildTime,
    Candidate,
    chunks_under,
)
from ingest.vector.tune_run import exact_top_ids

# ---- the command on chdb -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return loaded_chdb(tmp_path_factory.mktemp("tune"), "--segment-rows", "1500")  # 8 parts, merged first


TUNE = ("--sample-rows", "4000", "--no-progress")


def test_exact_top_ids_in_one_scan_match_numpy_on_the_source(table: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The brute-force truth the tuning and the full-index check rely on, against np.load of the .npy files."""
    ids = np.concatenate([np.arange(6000, dtype=np.int64) + s * 10_000_000 for s in (0, 1)])
    vecs = np.concatenate(
        [np.load(table.parent / "src" / "img_emb" / f"img_emb_{s}.npy").astype(np.float64) for s in (0, 1)]
    )
    picks = [3, 4321, 6000 + 17, 11_999]
    literals = [vector_literal(vecs[i].astype(np.float32)) for i in picks]
    assert chunks_under(literals, 10**9) == [[0, 1, 2, 3]] and chunks_under(literals, 1) == [[0], [1], [2], [3]]
    monkeypatch.setattr(tune_run, "QUERY_TEXT_BUDGET", max(map(len, literals)) + 64)  # one query per scan

    async def scenario() -> list[list[int]]:
        sink = ChdbSink(TargetConfig(parse_target(f"chdb:{table}"), "default"))
        await sink.connect()
        try:
            return await exact_top_ids(
                sink, TableRef("default", "laion"), "image_embedding", "cosineDistance", literals, 10
            )
        finally:
            await sink.close()

    got = asyncio.run(scenario())
    norms = np.linalg.norm(vecs, axis=1)
    for i, top in zip(picks, got, strict=True):
        dist = 1.0 - (vecs @ vecs[i]) / (norms * norms[i])
        assert top == [int(x) for x in ids[np.argsort(dist, kind="stable")[:10]]]
        assert top[0] == ids[i]


def test_a_sample_build_is_timed_in_the_engines_cpu_and_dropped(table: Path) -> None:
    """tune_run on real chdb: a sample of 6,000 of the 12,000 rows in graphs of 6 granules of 500, its query rows'
    exact top-10 (not among the sample), one candidate built only for its cost: wall and the engine's CPU both
    measured (chdb: this process's CPU, which holds the engine), the scratch index dropped after; then two
    candidates in rounds (tune_ahead's cost ratio), also dropped."""
    ref = TableRef("default", "laion")
    spec = tune_run.SampleSpec(12_000, 6_000, 20, GraphSize(6, 500, 2), 512, "cosineDistance")
    cand, other = Candidate("f32", 32, 256), Candidate("bf16", 16, 64)

    async def scenario() -> tuple[tune_run.OnSample, list[BuildTime], list[dict[str, object]], int]:
        sink = ChdbSink(TargetConfig(parse_target(f"chdb:{table}"), "default"))
        await sink.connect()
        try:
            on = await tune_run.fill_sample(sink, ref, "image_embedding", spec, 0, (64,))
            took = [await tune_run.build_cost(on, cand)]
            took += [BuildTime(0.0, c) for c in await tune_run.least_costs(on, [cand, other], 2)]
            left = await sink.query(f"SELECT name FROM system.data_skipping_indices WHERE table = '{on.scratch.table}'")
            n = int((await sink.query(f"SELECT count() AS n FROM {on.scratch.sql}"))[0]["n"])
            return on, took, left, n
        finally:
            await sink.execute(drop_table_sql(scratch_ref(ref)))
            await sink.close()

    on, took, left, n = asyncio.run(scenario())
    assert n == 6_000 and len(on.queries) == 20 and all(len(t) == 10 for t in on.truth)
    for t in took:
        assert t.cpu_seconds is not None and 0 < t.cpu_seconds < 60
        assert t.cost == t.cpu_seconds  # builds are compared in CPU where the engine says
    assert left == []  # every scratch index is dropped
    assert tune_run.sample_index(on, cand).granularity == 6


def test_dry_run_prints_grid_and_choice_and_builds_nothing(table: Path) -> None:
    out = ok(cli("index", "--target", f"chdb:{table}", "--recall-target", "0.9", "--dry-run", *TUNE))
    assert "candidates on 4,000 sampled rows" in out and "recall@10 L=256" in out and "projected memory" in out
    assert re.search(r"chose (i8|bf16) M=\d+ ef_c=\d+, search list \d+: cheapest build", out), out
    assert "projected index memory" in out and "--dry-run: nothing built" in out
    assert "merged first" not in out  # a dry run leaves the user's parts alone
    assert chdb_rows(table, "SELECT name FROM system.data_skipping_indices WHERE table = 'laion'") == []
    assert chdb_rows(table, "SELECT name FROM system.tables WHERE name LIKE '_laion_tune%'") == []  # scratch dropped


def test_too_large_for_max_memory_is_refused_in_one_line(table: Path) -> None:
    res = cli("index", "--target", f"chdb:{table}", "--m", "16", "--ef-construction", "64", "--max-memory", "10M")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "over --max-memory 10.0 MiB" in lines[0] and "configurations that fit: --quantization" in lines[0]
    assert "--force" in lines[0]
    assert chdb_rows(table, "SELECT name FROM system.data_skipping_indices WHERE table = 'laion'") == []


def test_tuned_build_reaches_the_target_and_eval_uses_the_recorded_list(table: Path, tmp_path: Path) -> None:
    target = f"chdb:{table}"
    out = ok(cli("index", "--target", target, "--recall-target", "0.95", "--max-graphs", "4", *TUNE))
    # built once, over one final part (8 parts after the load: merged first, unless the server merged them already)
    assert "8 parts: merged first" in out or "1 part, one per partition" in out, out
    assert re.search(r"sample grown to [\d,]+ rows to hold graphs of [\d,]+ rows", out), out  # past 4,000
    m = re.search(r"recall@10 (\d\.\d+) on the full index at hnsw_candidate_list_size_for_search=(\d+)", out)
    assert m and float(m.group(1)) >= 0.95, out
    listed = int(m.group(2))
    parts = chdb_rows(
        table, "SELECT secondary_indices_compressed_bytes AS b FROM system.parts WHERE active AND table = 'laion'"
    )
    assert len(parts) == 1 and int(parts[0]["b"]) > 0

    doc = orjson.loads(ok(cli("eval", "--target", target, "--queries", "40", "--seed", "5", "--json")))
    assert doc["hnsw_candidate_list_size_for_search"] == listed
    assert doc["search_list_source"].startswith("recorded when tuned")
    assert doc["recall_at_10"] >= 0.9  # other query rows than the check's: a little slack
    hit = orjson.loads(ok(cli("search", "--target", target, "--like-id", "7", "--json", "--limit", "3")))
    assert hit["settings"]["hnsw_candidate_list_size_for_search"] == listed and hit["index_used"] is True

    again = ok(cli("index", "--target", target, *TUNE))
    assert "exists already" in again and "not tuning" in again and "candidates on" not in again

    png = tmp_path / "curve.png"
    sweep = ("--ef-search", "16", "--ef-search", "64", "--ef-search", "256")
    res = ok(cli("eval", "--target", target, "--queries", "20", "--k", "10", "--k", "100", *sweep, "--plot", str(png)))
    assert "recall@100" in res and "p99 ms" in res and "QPS c=4" in res
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    assert struct.unpack(">II", head[16:24]) == (800, 500)


def test_tuned_graphs_smaller_than_a_part_reach_the_target(tmp_path: Path) -> None:
    """Two parts of 6,000 rows (3 granules each): with --max-graphs 4 the grid offers graphs of 2 granules, the
    sample holds more than two of them, and the choice is built with that GRANULARITY and checked in full."""
    src, db = tmp_path / "src", tmp_path / "db"
    for s in (0, 1):
        write_shard(src, s, SynthSpec(rows=6000, seed=5))
    ok(cli("run", "--source", str(src), "--shards", "0-1", "--target", f"chdb:{db}", "--no-progress"))
    target = f"chdb:{db}"
    args = ("--recall-target", "0.95", "--sample-rows", "9000", "--max-graphs", "4", "--no-progress")
    out = ok(cli("index", "--target", target, *args))
    chose = re.search(r"chose bf16 M=\d+ ef_c=\d+, search list \d+: .* in graphs of ([\d,]+) rows, 4 per search", out)
    assert chose, out
    assert f"(dropped afterwards, graphs of {chose.group(1)} rows)" in out, out  # the sample measured that size
    built = re.search(r"GRANULARITY (\d+) on image_embedding over 12,000 rows", out)
    assert built, out
    granules = int(built.group(1))
    index = chdb_rows(db, "SELECT granularity FROM system.data_skipping_indices WHERE name = 'image_index'")
    assert [int(r["granularity"]) for r in index] == [granules]
    parts = chdb_rows(
        db,
        "SELECT marks - 1 AS g, secondary_indices_compressed_bytes AS b FROM system.parts "
        "WHERE active AND table = 'laion'",
    )
    assert sum(-(-int(p["g"]) // granules) for p in parts) <= 4 and all(int(p["b"]) > 0 for p in parts)
    m = re.search(r"recall@10 (\d\.\d+) on the full index at hnsw_candidate_list_size_for_search=(\d+)", out)
    assert m and float(m.group(1)) >= 0.95, out
    doc = orjson.loads(ok(cli("eval", "--target", target, "--queries", "40", "--seed", "5", "--json")))
    assert doc["hnsw_candidate_list_size_for_search"] == int(m.group(2)) and doc["recall_at_10"] >= 0.9
    assert chdb_rows(db, "SELECT name FROM system.tables WHERE name LIKE '_laion_tune%'") == []


# ---- the daemon keeps a growing table indexed --------------------------------------------------------------


def test_daemon_rematerializes_new_parts_and_merges_do_not_rebuild(
    tmp_path: Path,
    daemons: Callable[..., DaemonProc],
) -> None:
    src = tmp_path / "src"
    write_shard(src, 0, SynthSpec(rows=3000, seed=2))
    db = tmp_path / "db"
    target = f"chdb:{db}"
    ok(cli("run", "--source", str(src), "--shards", "0", "--target", target, "--no-progress"))
    ok(cli("index", "--target", target, "--m", "16", "--ef-construction", "64", "--no-progress"))
    for s in (1, 2):
        write_shard(src, s, SynthSpec(rows=3000, seed=2))

    d = daemons(tmp_path, src, target, "--index-every", "1")
    built = "laion_ingest_index_rematerializations_total"
    m = d.wait_for(
        "new shards loaded and covered",
        lambda m: (
            m.get('laion_ingest_shards_total{status="done"}') == 2
            and m.get(built, 0) >= 1
            and m.get("laion_ingest_index_uncovered_parts") == 0
        ),
    )
    assert m["laion_ingest_index_rows_built_total"] >= 6000
    assert d.terminate() == 0
    assert any("vector index built for" in msg for msg in d.messages())

    create = chdb_rows(db, "SELECT create_table_query AS q FROM system.tables WHERE name = 'laion'")[0]["q"]
    assert "materialize_skip_indexes_on_merge = 0" in create
    parts = chdb_rows(
        db,
        "SELECT sum(rows) AS n, min(secondary_indices_compressed_bytes) AS b FROM system.parts "
        "WHERE active AND table = 'laion'",
    )[0]
    assert int(parts["n"]) == 9000 and int(parts["b"]) > 0  # every row's part carries the index

    # and a merge does not rebuild it: force one; the merged part comes out without the index, for the
    # daemon's next scheduled run to build once
    from chdb import session

    s = session.Session(str(db))  # type: ignore[no-untyped-call]
    try:
        s.query("OPTIMIZE TABLE laion FINAL")  # type: ignore[no-untyped-call]
        data = s.query(  # type: ignore[no-untyped-call]
            "SELECT count() AS parts, max(secondary_indices_compressed_bytes) AS b FROM system.parts "
            "WHERE active AND table = 'laion'",
            "JSONEachRow",
        ).bytes()
    finally:
        s.close()  # type: ignore[no-untyped-call]
    merged = orjson.loads(data.splitlines()[0])
    assert int(merged["parts"]) == 1 and int(merged["b"]) == 0


def test_a_table_of_few_parts_is_merged_before_the_build(tmp_path: Path) -> None:
    """Left as 2 parts, the server would merge them after the build and build the merged part's graph again."""
    src, db = tmp_path / "src", tmp_path / "db"
    for s in (0, 1):
        write_shard(src, s, SynthSpec(rows=3000, seed=3))
    ok(cli("run", "--source", str(src), "--shards", "0-1", "--target", f"chdb:{db}", "--no-progress"))
    out = ok(cli("index", "--target", f"chdb:{db}", "--m", "8", "--ef-construction", "16", "--no-progress"))
    assert "default.laion: 2 parts: merged first, one part per partition" in out, out
    parts = chdb_rows(
        db, "SELECT rows, secondary_indices_compressed_bytes AS b FROM system.parts WHERE active AND table = 'laion'"
    )
    assert [int(p["rows"]) for p in parts] == [6000] and all(int(p["b"]) > 0 for p in parts)


def test_tuning_on_chdb_pauses_the_tables_merges_and_resumes_them(table: Path) -> None:
    """autoindex.merges_paused on real chdb: inside, the table's merges are stopped (OPTIMIZE is refused, so no
    background merge runs beside the timed sample builds); after, even when the body fails, OPTIMIZE runs."""

    async def scenario() -> tuple[str, int]:
        sink = ChdbSink(TargetConfig(parse_target(f"chdb:{table}"), "default"))
        await sink.connect()
        ref = TableRef("default", "laion")
        refused = ""
        try:
            with contextlib.suppress(RuntimeError):
                async with merges_paused(sink, ref, True):
                    try:
                        await sink.execute(f"OPTIMIZE TABLE {ref.sql} FINAL")
                    except TargetError as exc:
                        refused = str(exc)
                    raise RuntimeError("the tuner failed")
            await sink.execute(f"OPTIMIZE TABLE {ref.sql} FINAL")  # merges resumed: it runs
            parts = await sink.query("SELECT count() AS n FROM system.parts WHERE table = 'laion' AND active")
            return refused, int(parts[0]["n"])
        finally:
            await sink.close()

    refused, parts = asyncio.run(scenario())
    assert "cancel" in refused.lower(), refused
    assert parts == 1


def test_a_sample_larger_than_one_insert_block_is_one_part(tmp_path: Path) -> None:
    """140,000 rows of 512 float32 (~290 MB) are more than one INSERT block (min_insert_block_size_bytes, 256
    MiB), so the copy lands as two parts; fill_sample merges them, so its graphs are the size planned (a graph never
    spans parts) and no background merge of the scratch table runs inside a timed build."""
    ref = TableRef("default", "laion")
    spec = tune_run.SampleSpec(140_050, 140_000, 50, None, 512, "cosineDistance")

    async def scenario() -> tuple[int, int, int]:
        sink = ChdbSink(TargetConfig(parse_target(f"chdb:{tmp_path / 'db'}"), "default"))
        await sink.connect()
        try:
            await sink.ensure_table(ref)
            await sink.execute(
                f"INSERT INTO {ref.sql} SELECT number, '', '', '', 0, "
                "arrayMap(i -> toFloat32(randCanonical() - 0.5), range(512)), [] FROM numbers(140050)"
            )
            scratch = scratch_ref(ref)
            await sink.execute(create_scratch_sql(scratch))
            await sink.execute(fill_scratch_sql(scratch, ref, "image_embedding", 140_050, 140_000, 50, 0))
            copied = await sink.query(
                f"SELECT count() AS n FROM system.parts WHERE table = '{scratch.table}' AND active"
            )
            on = await tune_run.fill_sample(sink, ref, "image_embedding", spec, 0)
            parts = await sink.query(
                f"SELECT count() AS n, sum(rows) AS r FROM system.parts WHERE table = '{scratch.table}' AND active"
            )
            return int(copied[0]["n"]), int(parts[0]["n"]), int(parts[0]["r"]) + len(on.queries)
        finally:
            await sink.execute(drop_table_sql(scratch_ref(ref)))
            await sink.close()

    copied, parts, rows = asyncio.run(scenario())
    assert copied >= 2, "the plain copy should span more than one part, else this test shows nothing"
    assert parts == 1 and rows == 140_050
