"""`plan`: the pure capacity planner (structures × node counts) and the command (text, --json, refusal, and
constants read back from a table the tuner measured on real chdb)."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest
from cli_run import cli
from exact import chdb_rows

from ingest.clickhouse.index_sql import GRID_COLUMNS, GRID_TABLE
from ingest.core.schema import DEFAULT_INDEX_GRANULARITY
from ingest.stages.synth import SynthSpec, write_shard
from ingest.vector.capacity import Ask, Constants, Structure, node_counts, option, plan, scaled
from ingest.vector.growth import GRAPH_EXPONENT, merged_graph_rows, scale_build_seconds
from ingest.vector.sizing import counted_bytes, formula_bytes, resident_bytes
from ingest.vector.tune import Candidate

GIB = 1 << 30


def consts() -> Constants:
    def s(q: str, m: int, f: int, recall: float) -> Structure:
        return Structure(Candidate(q, m, 64, f), recall, 128, 4.0, 20_000, 20_000, 2.0)

    return Constants(
        (s("bf16", 16, 0, 0.99), s("i8", 16, 0, 0.86), s("i8", 16, 4, 0.98), s("b1", 8, 16, 0.96)),
        load_rows_per_second=50_000.0,
        disk_bytes_per_value=8.0,
        disk_bytes_other=100.0,
        source="test constants",
    )


def test_one_option_is_the_projects_own_sizing_and_build_models() -> None:
    k = consts()
    ask = Ask(rows=400_000_000, dim=512, nodes=8, max_memory=64 * GIB, max_graphs=16)
    o = option(ask, k, k.structures[2], 8)  # i8 M=16 rescored
    per_node = 50_000_000
    assert o.rows_per_node == per_node
    assert o.memory_per_node_bytes == resident_bytes(per_node, 512, "i8", 16)
    assert o.cache_per_node_bytes == counted_bytes(per_node, 512, "i8", 16)
    assert o.disk_per_node_bytes == int(per_node * (8.0 * 512 + 100.0) + formula_bytes(per_node, 512, "i8", 16))
    graph, _ = merged_graph_rows(per_node, DEFAULT_INDEX_GRANULARITY, 16)
    assert o.build_hours == pytest.approx(scale_build_seconds(4.0, 20_000, 20_000, per_node, graph) / 3600)
    assert o.load_hours_per_worker == pytest.approx(400_000_000 / 50_000 / 3600)
    assert o.load_hours == pytest.approx(o.load_hours_per_worker / 8)
    # resident 50M × (512 + 128 + 32) × 1.2 bytes = 37.6 GiB fits a 64 GiB node; on 4 nodes, 75.1 GiB does not
    assert o.fits and o.reaches and o.recall_at_10 == 0.98
    four = option(ask, k, k.structures[2], 4)
    assert four.memory_per_node_bytes == resident_bytes(10**8, 512, "i8", 16) > 64 * GIB and not four.fits
    # more cores build faster
    faster = option(Ask(400_000_000, 512, 8, 64 * GIB, cores=8), k, k.structures[2], 8)
    assert faster.build_hours == pytest.approx(o.build_hours / 4)
    assert node_counts(8) == [1, 2, 4, 8] and node_counts(6) == [1, 2, 4, 6] and node_counts(1) == [1]


def test_plan_chooses_the_least_total_memory_that_fits_and_reaches_the_target() -> None:
    p = plan(Ask(400_000_000, 512, 8, 64 * GIB), consts())
    assert p.choice is not None
    # b1 M=8 rescored reaches 0.96 and is the smallest: resident (64 + 64 + 32) × 1.2 = 192 bytes a row, 71.5 GiB
    # on one node, 35.8 GiB a node on 2; the cache counts (64 + 64) × 2 + 256 = 512 bytes a row, 95.4 GiB a node
    assert (p.choice.structure.candidate, p.choice.nodes) == (Candidate("b1", 8, 64, 16), 2)
    assert p.choice.memory_per_node_bytes == resident_bytes(200_000_000, 512, "b1", 8) == 192 * 2 * 10**8 <= 64 * GIB
    assert p.choice.cache_per_node_bytes == counted_bytes(200_000_000, 512, "b1", 8) == 512 * 2 * 10**8
    assert p.choice.nodes == min(o.nodes for o in p.options if o.fits and o.reaches)
    assert {o.nodes for o in p.options} == {1, 2, 4, 8} and len(p.options) == 16
    # i8 unrescored never reaches 0.95: weighed, never chosen
    assert all(not o.reaches for o in p.options if o.structure.candidate == Candidate("i8", 16, 64, 0))
    # a target only bf16 reaches: bf16 needs 66.2 GiB a node on 8 nodes, so nothing fits, and the reason says
    # what would: that memory per node, or the nodes of 64 GiB
    high = plan(Ask(400_000_000, 512, 8, 64 * GIB, recall_target=0.99), consts())
    assert high.choice is None
    need = resident_bytes(50_000_000, 512, "bf16", 16)
    nodes = math.ceil(resident_bytes(400_000_000, 512, "bf16", 16) / (64 * GIB))
    assert high.reason == (
        "nothing fits 8 node(s) × 64.0 GiB: the smallest structure that reaches recall@10 0.99, bf16 M=16 ef_c=64, "
        f"needs {need / GIB:.1f} GiB per node on 8 node(s), or ≥ {nodes} nodes of 64.0 GiB"
    )
    never = plan(Ask(1000, 512, 1, None, recall_target=0.999), consts())
    assert never.choice is None and never.reason.startswith("no measured structure reaches recall@10 1.00: best 0.990")


def test_a_build_time_bound_buys_nodes_or_names_the_fastest_build() -> None:
    k = consts()
    free = plan(Ask(400_000_000, 512, 8, 64 * GIB), k)
    assert free.choice is not None and free.choice.nodes == 2
    # half the unbounded choice's build hours: 2 nodes are too slow, the same structure on more nodes is chosen
    bound = free.choice.build_hours / 2
    timed = plan(Ask(400_000_000, 512, 8, 64 * GIB, max_build_hours=bound), k)
    assert timed.choice is not None and timed.choice.nodes > 2 and timed.choice.build_hours <= bound
    assert timed.reason.endswith(f"within {bound:g} h of build")
    assert all(not o.in_time for o in timed.options if o.nodes == 2 and o.structure == free.choice.structure)
    # tighter than even 8 nodes build: nothing is chosen, and the reason names the fastest build and the cores
    fastest = min(o.build_hours for o in timed.options if o.fits and o.reaches)
    none = plan(Ask(400_000_000, 512, 8, 64 * GIB, max_build_hours=fastest / 3), k)
    assert none.choice is None
    assert none.reason.startswith("nothing builds within ") and f"builds in {fastest:.1f} h" in none.reason
    assert none.reason.endswith("more nodes, or ≥ 6 cores a node"), none.reason


def test_constants_scale_with_the_dimension() -> None:
    k = consts()
    wide = scaled(k, 512, 768)
    assert wide.structures[0].build_seconds == pytest.approx(6.0) and wide.load_rows_per_second == pytest.approx(
        50_000 / 1.5
    )
    assert scaled(k, 512, 512) is k and "scaled from 512-d to 768-d" in wide.source


# ---- the command -------------------------------------------------------------------------------------------


def test_plan_json_names_the_choice_and_its_candidates() -> None:
    res = cli("plan", "--rows", "400000000", "--nodes", "8", "--max-memory", "64G", "--json")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    doc = orjson.loads(res.stdout)
    choice = doc["choice"]
    for key in (
        "structure",
        "nodes",
        "memory_per_node_bytes",
        "disk_per_node_bytes",
        "load_hours",
        "build_hours",
        "recall_at_10",
        "latency_ms",
    ):
        assert key in choice
    assert choice["memory_per_node_bytes"] <= 64 * GIB and choice["nodes"] <= 8 and choice["recall_at_10"] >= 0.95
    assert len(doc["candidates"]) >= 4 and doc["projected"] is True
    assert doc["constants_source"].startswith("defaults measured here")
    assert doc["server_settings"] == {"vector_similarity_index_cache_size": choice["cache_per_node_bytes"]}
    assert choice["cache_per_node_bytes"] > choice["memory_per_node_bytes"]
    assert doc["graph_exponent"] == GRAPH_EXPONENT
    text = cli("plan", "--rows", "400000000", "--nodes", "8", "--max-memory", "64G")
    assert text.returncode == 0 and "plan: " in text.stdout and "projected (nothing here was built" in text.stdout
    assert "vector_similarity_index_cache_size ≥ " in text.stdout and "cache_size_to_ram_max_ratio" in text.stdout
    slow = cli("plan", "--rows", "400000000", "--nodes", "8", "--max-memory", "64G", "--max-build-hours", "0.5")
    assert slow.returncode == 2 and "Traceback" not in slow.stderr
    lines = [ln for ln in slow.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: nothing builds within 0.5 h on up to 8 node(s)"), lines
    assert "too slow" in slow.stdout
    zero = cli("plan", "--rows", "400000000", "--max-build-hours", "0")  # no build takes no time: a usage error
    assert zero.returncode == 2 and "Traceback" not in zero.stderr and "--max-build-hours" in zero.stderr
    assert "0<x" in zero.stderr.replace(" ", "") or "greater than 0" in zero.stderr, zero.stderr


def test_plan_that_cannot_fit_is_refused_in_one_line_naming_the_hardware() -> None:
    res = cli("plan", "--rows", "400000000", "--nodes", "2", "--max-memory", "1G")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: nothing fits 2 node(s) × 1.0 GiB: the smallest"), lines
    assert "per node on 2 node(s), or ≥ " in lines[0] and "nodes of 1.0 GiB" in lines[0]
    bad = cli("plan", "--rows", "0")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_plan_from_a_tuned_table_uses_its_measurements(tmp_path: Path) -> None:
    src, db = tmp_path / "src", tmp_path / "db"
    write_shard(src, 0, SynthSpec(rows=6000, seed=4))
    target = f"chdb:{db}"
    assert cli("run", "--source", str(src), "--shards", "0", "--target", target, "--no-progress").returncode == 0
    tuned = cli("index", "--target", target, "--dry-run", "--sample-rows", "3000", "--no-progress")
    assert tuned.returncode == 0, tuned.stderr
    res = cli("plan", "--rows", "100000000", "--nodes", "4", "--max-memory", "64G", "--target", target, "--json")
    assert res.returncode in (0, 2) and "Traceback" not in res.stderr, res.stderr
    doc = orjson.loads(res.stdout)
    assert doc["constants_source"].startswith("measured on default.laion.image_embedding by `index`"), doc
    assert "bytes per row as stored in default.laion" in doc["constants_source"]
    structures = {c["structure"] for c in doc["candidates"]}
    assert any(s.startswith("bf16 M=") for s in structures)  # the tuner's grid, not the defaults' fixed five
    assert doc["graph_exponent"] == GRAPH_EXPONENT  # b is the default, whatever the tuner measured
    (cols,) = chdb_rows(
        db,
        "SELECT countIf(name = 'graph_exponent') AS b, countIf(name = 'dim') AS dim FROM system.columns "
        f"WHERE table = '{GRID_TABLE}'",
    )
    assert (int(cols["b"]), int(cols["dim"])) == (0, 1)  # the grid table made now has no slot for b


def test_plan_reads_an_older_grid_table_that_kept_the_exponent(tmp_path: Path) -> None:
    """A grid table an older `index` made has a graph_exponent column (in its DDL, as here, or added after
    `recorded`), where `index --project-rows` once kept the b it read from sample builds: `index` still records
    into it (the column left NULL) and `plan --target` still reads its rows, scaling builds by the default b."""
    src, db = tmp_path / "src", tmp_path / "db"
    write_shard(src, 0, SynthSpec(rows=6000, seed=4))
    target = f"chdb:{db}"
    assert cli("run", "--source", str(src), "--shards", "0", "--target", target, "--no-progress").returncode == 0
    chdb_rows(
        db,
        f"CREATE TABLE default.{GRID_TABLE} (table_name String, column_name String, {GRID_COLUMNS}, "
        "graph_exponent Nullable(Float64), recorded DateTime64(3)) "
        "ENGINE = MergeTree ORDER BY (table_name, column_name, recorded)",
    )
    tuned = cli("index", "--target", target, "--dry-run", "--sample-rows", "3000", "--no-progress")
    assert tuned.returncode == 0, tuned.stderr
    (row,) = chdb_rows(db, f"SELECT count() AS n, countIf(graph_exponent IS NULL) AS null FROM {GRID_TABLE}")
    assert int(row["n"]) > 0 and row["null"] == row["n"]
    # a b recorded by such an older `index --project-rows`: the rows load, the value is not used
    chdb_rows(
        db,
        f"INSERT INTO {GRID_TABLE} SELECT * REPLACE (0.41 AS graph_exponent, addSeconds(recorded, 1) AS recorded) "
        f"FROM {GRID_TABLE}",
    )
    res = cli("plan", "--rows", "100000000", "--nodes", "4", "--target", target, "--json")
    assert res.returncode == 0, res.stderr
    doc = orjson.loads(res.stdout)
    assert doc["constants_source"].startswith("measured on default.laion.image_embedding by `index`"), doc
    assert doc["graph_exponent"] == GRAPH_EXPONENT
    text = cli("plan", "--rows", "100000000", "--nodes", "4", "--target", target)
    assert f"b = {GRAPH_EXPONENT:.2f} (per-row cost ∝ G^b; the default, measured here" in text.stdout, text.stdout
