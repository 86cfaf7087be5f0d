"""Projecting a larger table from a build measured on this one (`index --project-rows`, `--report`): the pure
arithmetic, then the command on real chdb (12,000 rows) with its JSON report and the index's memory as ClickHouse
reports it once loaded."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from cli_run import cli, loaded_chdb, ok

from ingest.clickhouse.vector_sql import VectorIndex
from ingest.vector.graphs import PartStats, graphs_over
from ingest.vector.growth import (
    GRAPH_EXPONENT,
    Ahead,
    MeasuredBuild,
    build_work,
    merged_graph_rows,
    project_build,
    project_end,
    project_range,
    scale_build_seconds,
)
from ingest.vector.index import IndexOutcome
from ingest.vector.index_rebuild import Build, lesser
from ingest.vector.index_report import CacheState, cache_bytes
from ingest.vector.sizing import formula_bytes, resident_bytes


def built_from(entry: dict[str, Any]) -> MeasuredBuild:
    """The MeasuredBuild an `index --report` entry records (what bench/growth_report.py reads back)."""
    return MeasuredBuild(
        entry["rows"],
        512,
        entry["quantization"],
        entry["m"],
        entry["graph_rows"],
        entry["build_seconds"],
        entry["memory_bytes"],
        entry["build_cpu_seconds"],
        tuple(Ahead.from_dict(a) for a in entry["ahead"]),
    )


def test_build_scales_by_rows_and_a_power_of_the_graph() -> None:
    assert scale_build_seconds(10.0, 1000, 1000, 1000, 1000) == pytest.approx(10.0)
    # 4× the rows in graphs 4× larger: 4 × 4^b
    assert scale_build_seconds(10.0, 1000, 1000, 4000, 4000) == pytest.approx(40.0 * 4**GRAPH_EXPONENT)
    assert scale_build_seconds(10.0, 1000, 1000, 4000, 4000, 0.5) == pytest.approx(80.0)
    # graphs of one size however many rows: linear
    assert scale_build_seconds(10.0, 1000, 500, 4000, 500) == pytest.approx(40.0)


def test_build_work_sums_g_to_the_one_plus_b_over_the_graphs() -> None:
    assert build_work(4000, 1000, 0.5) == pytest.approx(4 * 1000**1.5)
    # the last graph holds the rest
    assert build_work(2500, 1000, 0.5) == pytest.approx(2 * 1000**1.5 + 500**1.5)
    assert build_work(500, 1000, 0.5) == pytest.approx(500**1.5)  # fewer rows than a graph: one graph
    assert build_work(4000, 1000) == pytest.approx(4 * 1000 ** (1 + GRAPH_EXPONENT))


def test_wall_is_the_projected_cpu_over_the_cores_the_measured_build_used() -> None:
    # 100 s of wall, 150 CPU s: 1.5 cores; at 4× the rows in graphs 4× larger the CPU grows by build_work
    built = MeasuredBuild(1_000_000, 512, "bf16", 16, 62_500, 100.0, 1_300_000_000, 150.0)
    p = project_build(built, 4_000_000, 2500, 16)
    work = build_work(4_000_000, 250_000) / build_work(1_000_000, 62_500)
    assert built.cores_used == pytest.approx(1.5)
    assert p.build_cpu_seconds == pytest.approx(150.0 * work)
    assert p.build_seconds == pytest.approx(150.0 * work / 1.5)
    assert "CPU s on the 1.50 cores the measured build used" in p.line()
    assert p.as_dict()["cores_used"] == pytest.approx(1.5)


def test_the_base_is_the_lesser_of_two_builds_by_cpu_on_chdb_else_by_wall() -> None:
    ix = VectorIndex("image_index", "image_embedding", 512)
    first = Build(IndexOutcome(ix, False, 1000, 100.0), 150.0)
    second = Build(IndexOutcome(ix, False, 1000, 110.0), 140.0)  # slower on the clock, less CPU
    assert lesser(first, second, by_cpu=True) is second
    assert lesser(first, second, by_cpu=False) is first  # a server's CPU is not ours: the wall decides
    assert lesser(first, Build(second.outcome, 150.0), by_cpu=True) is first  # a tie keeps the first


def test_the_structure_chosen_ahead_multiplies_the_build_and_resizes_the_memory() -> None:
    """At 4M rows the tuner chose M=16 ef_c=32 where 1M built M=12 ef_c=24: the projection is that structure's."""
    ahead = Ahead(4_000_000, "bf16", 16, 32, 1.4, 200_000, False)
    built = MeasuredBuild(1_000_000, 512, "bf16", 12, 62_500, 100.0, 1_141_000_000, 150.0, (ahead,))
    plain = project_build(built, 4_000_000, 2500, 16, structure=False)
    p = project_build(built, 4_000_000, 2500, 16)
    assert p.build_cpu_seconds == pytest.approx(plain.build_cpu_seconds * 1.4)  # type: ignore[operator]
    sized = resident_bytes(4_000_000, 512, "bf16", 16) / resident_bytes(4_000_000, 512, "bf16", 12)
    assert p.index_bytes == pytest.approx(plain.index_bytes * sized, rel=1e-6)
    assert p.formula_bytes == formula_bytes(4_000_000, 512, "bf16", 16)
    assert "of bf16 M=16 ef_c=32, what the tuner chooses there" in p.line() and "× 1.40" in p.line()
    assert p.as_dict()["structure"] == ahead.as_dict() and plain.as_dict()["structure"] is None
    # another size: no look ahead there, the built structure's growth at the default b
    two = project_build(built, 2_000_000, 2500, 16)
    assert two.ahead is None and two.as_dict()["graph_exponent"] == GRAPH_EXPONENT
    # every size scales by the default b, the structure chosen there multiplying it
    near = MeasuredBuild(1_000_000, 512, "bf16", 12, 62_500, 100.0, None, 150.0, (replace(ahead, rows=2_000_000),))
    work = build_work(2_000_000, 125_000) / build_work(1_000_000, 62_500)
    assert project_build(near, 2_000_000, 2500, 16).build_cpu_seconds == pytest.approx(150.0 * work * 1.4)
    # the same structure chosen there: no factor, nothing said
    same = MeasuredBuild(1_000_000, 512, "bf16", 12, 62_500, 100.0, None, 150.0, (replace(ahead, same=True),))
    assert project_build(same, 4_000_000, 2500, 16).ahead is None


def test_the_choices_of_samples_reading_higher_and_lower_are_the_ends_of_the_projected_range() -> None:
    """The 2M table's own tuner chose, over four samples, M=12 ef_c=32 (twice), M=16 ef_c=32 and M=12 ef_c=64 (1.65×
    the build): the projection gives the choice and both ends, each scaled by its own measured cost, and says why."""
    eager = Ahead(2_000_000, "bf16", 12, 24, 0.9, 125_000, False)
    wary = Ahead(2_000_000, "bf16", 16, 64, 1.9, 125_000, False)
    ahead = Ahead(2_000_000, "bf16", 12, 32, 1.0, 125_000, True, eager=eager, wary=wary)
    built = MeasuredBuild(1_000_000, 512, "bf16", 12, 62_500, 100.0, 1_141_000_000, 150.0, (ahead,))
    p = project_range(built, 2_000_000, 2500, 16)
    assert p.ahead is None and p.eager is not None and p.wary is not None  # the choice is the structure built here
    assert p.eager.build_cpu_seconds == pytest.approx(p.build_cpu_seconds * 0.9)  # type: ignore[operator]
    assert p.wary.build_cpu_seconds == pytest.approx(p.build_cpu_seconds * 1.9)  # type: ignore[operator]
    assert p.wary.index_bytes > p.index_bytes == p.eager.index_bytes  # M=16 holds more links
    assert p.span(lambda x: x.build_seconds) == (p.eager.build_seconds, p.wary.build_seconds)
    line = p.line()
    assert f"build {p.wary.build_seconds:.0f} s" in line and "reads recall@10 0.02 lower" in line
    assert "reads recall@10 0.02 higher than this one did (its tuner then chooses bf16 M=12 ef_c=24)" in line
    assert p.as_dict()["wary"]["build_seconds"] == p.wary.build_seconds  # type: ignore[index]
    assert Ahead.from_dict(ahead.as_dict()) == ahead  # the report keeps both, nested
    plain = replace(built, ahead=(replace(ahead, eager=None, wary=None),))
    assert project_end(plain, 2_000_000, 2500, 16, "wary") is None
    assert project_range(plain, 2_000_000, 2500, 16).span(lambda x: x.build_seconds)[0] == p.build_seconds


def test_the_grid_a_lower_target_would_have_stopped_at() -> None:
    """The look ahead measures on to the wary target; the choice at the target is made on the builds a tuner
    aiming at it would have measured (measure_grid stops at the first reaching it at list ≤ 256)."""
    from ingest.vector.grid_stop import measured_to
    from ingest.vector.tune import Candidate, Measured

    a, b, c = (Candidate("bf16", 12, ef) for ef in (24, 32, 64))
    grid = [Measured(a, 1.0, {256: 0.93, 512: 0.95}), Measured(b, 1.2, {256: 0.955}), Measured(c, 0.9, {256: 0.975})]
    assert [m.candidate for m in measured_to(grid, 0.95)] == [a, b]  # c (cheaper by noise) was never built there
    assert [m.candidate for m in measured_to(grid, 0.97)] == [a, b, c]


def test_merged_graphs_are_cut_to_max_graphs() -> None:
    assert merged_graph_rows(1_000_000, 2500, 16) == (62_500, 16)
    assert merged_graph_rows(4_000_000, 2500, 16) == (250_000, 16)
    assert merged_graph_rows(1000, 2500, 16) == (1000, 1)  # less than a granule: one graph of what there is
    assert merged_graph_rows(10_000, 2500, 3) == (5000, 2)  # 4 granules, 3 graphs at most: 2 of 2 granules


def test_projection_scales_measured_bytes_per_row_and_says_the_formula() -> None:
    built = MeasuredBuild(1_000_000, 512, "bf16", 16, 62_500, 100.0, 1_300_000_000)
    p = project_build(built, 4_000_000, 2500, 16)
    assert (p.rows, p.graph_rows, p.graphs) == (4_000_000, 250_000, 16)
    assert p.index_bytes == 5_200_000_000
    assert p.build_seconds == pytest.approx(400.0 * 4**GRAPH_EXPONENT)
    # b is the default, and the projection says so
    assert "G^0.32, the default" in p.line() and p.as_dict()["graph_exponent"] == GRAPH_EXPONENT
    assert p.formula_bytes == formula_bytes(4_000_000, 512, "bf16", 16)
    assert "projected at 4,000,000 rows (16 graphs of 250,000)" in p.line()
    # nothing measured: the formula is the projection
    unknown = project_build(MeasuredBuild(1000, 512, "i8", 8, 1000, 1.0, None), 2000, 2500, 16)
    assert unknown.index_bytes == unknown.formula_bytes


def test_an_older_report_entry_with_a_graph_exponent_still_loads(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A growth bench row saved before b was the constant holds the graph_exponent `index --project-rows` read
    from sample builds: bench/growth_report.py loads it, and its model scales by the default all the same."""
    spec = importlib.util.spec_from_file_location(
        "growth_report", Path(__file__).parent.parent / "bench/growth_report.py"
    )
    assert spec is not None and spec.loader is not None
    report = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, report)  # its dataclasses look their module up
    spec.loader.exec_module(report)

    def saved(rows: int, graph_rows: int, build: float) -> dict[str, Any]:
        entry = dict(quantization="bf16", m=12, ef_construction=24, graphs=16, graph_rows=graph_rows, granularity=1)
        entry |= dict(build_seconds=build, memory_bytes=1141 * rows, ahead=[], projections=[], graph_exponent=0.5)
        phases = {"phases_seconds": {"build": build}, "phases_cpu_seconds": {"build": build}}
        ran = {"seconds": 10.0, "peak_rss_mb": 100.0}
        return dict(rows=rows, load=ran, server_rss_mb=None, parts=1, index=ran, index_server_cpu=0.0) | {
            "report": {"indexes": [entry], **phases},
            "evaluation": {"sweep": [{"p50_ms": 1.0}], "brute_force_median_ms": 2.0},
        }

    rows = [
        report.Row.from_dict(saved(1_000_000, 62_500, 100.0)),
        report.Row.from_dict(saved(4_000_000, 250_000, 450.0)),
    ]
    built = report.measured_build(rows[0])
    assert built == MeasuredBuild(1_000_000, 512, "bf16", 12, 62_500, 100.0, 1_141_000_000, 100.0)
    p = project_build(built, 4_000_000, 62_500, 16)
    assert p.build_seconds == pytest.approx(100.0 * build_work(4_000_000, 250_000) / build_work(1_000_000, 62_500))
    report.print_growth(rows)
    assert f"b = {GRAPH_EXPONENT:.2f} (the default)" in capsys.readouterr().out


def test_graphs_over_the_parts_as_they_are() -> None:
    # 500k rows loaded as 8 parts of 61,440 and 2 of 4,240, one graph per part: then merged in the background
    loaded = [PartStats("all", 61_440, 24, 1) for _ in range(8)] + [PartStats("all", 4_240, 2, 1)] * 2
    assert graphs_over(loaded, None) == (10, 61_440)
    merged = [PartStats("all", 245_760, 96, 1), PartStats("all", 254_240, 98, 1)]
    assert graphs_over(merged, None) == (2, 254_240)
    assert graphs_over(merged, 24) == (4 + 5, 61_440)  # 96 granules: 4 graphs; 98: 5 of ≤ 50,848 rows


def test_what_the_cache_counts_is_bytes_per_cache_cell_times_graphs() -> None:
    assert cache_bytes(CacheState(100, 1), CacheState(700, 4), 6) == 1200  # 3 cells of 200 added, 6 graphs
    assert cache_bytes(CacheState(800, 4), CacheState(800, 4), 2) == 400  # nothing added (evicted): all cells
    assert cache_bytes(CacheState(0, 0), CacheState(0, 0), 16) is None  # never loaded


# ---- the command on chdb -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return loaded_chdb(tmp_path_factory.mktemp("growth"), "--segment-rows", "1500")  # 8 parts, merged first


def test_report_and_projection_of_a_tuned_build(table: Path, tmp_path: Path) -> None:
    report = tmp_path / "index.json"
    args = ("--recall-target", "0.9", "--sample-rows", "4000", "--max-graphs", "4", "--no-progress")
    out = ok(cli("index", "--target", f"chdb:{table}", *args, "--project-rows", "48000", "--report", str(report)))
    doc = orjson.loads(report.read_bytes())
    phases = doc["phases_seconds"]
    assert set(phases) == {"tuning", "merge", "build", "check", "rebuild"} and all(v > 0 for v in phases.values())
    # no --max-memory and bf16 fits: only unrescored searches are weighed (rescoring is the slow search)
    assert "rescore×" not in out and "rescored variants left out" in out, out
    assert doc["total_seconds"] >= sum(phases.values()) * 0.99
    (entry,) = doc["indexes"]
    assert entry["name"] == "image_index" and entry["rows"] == 12_000 and entry["graphs"] <= 4
    assert entry["structure"].startswith("vector_similarity('hnsw', 'cosineDistance', 512, ")
    formula = formula_bytes(12_000, 512, entry["quantization"], entry["m"])
    # resident: the index's uncompressed bytes, about the documented formula; the cache counts usearch's arenas
    # once the check's searches loaded it (up to ~2× for graphs this small), the disk holds it compressed
    assert formula * 0.9 < entry["memory_bytes"] < formula * 1.15
    assert entry["memory_bytes"] < entry["cache_bytes"] < formula * 2 + entry["graphs"] * (20 << 20)
    assert formula * 0.8 < entry["disk_bytes"] <= entry["memory_bytes"]
    builds = {(b["quantization"], b["m"], b["ef_construction"]): b for b in entry["sample_builds"]}
    chosen = builds[(entry["quantization"], entry["m"], entry["ef_construction"])]  # the tuner built it on its sample
    assert chosen["build_seconds"] > 0 and chosen["sample_rows"] <= 12_000
    assert chosen["build_cpu_seconds"] > 0  # the engine's own CPU counters, read around the build
    # --project-rows: the grid again on the table's rows in the 48,000-row table's graphs (4 of 12,000; the
    # sample holds one of ~11,950): what the tuner would choose there; b is the default, not read from samples
    assert "looking ahead to 48,000 rows: the grid again on " in out, out
    (ahead,) = entry["ahead"]
    assert ahead["rows"] == 48_000 and 11_000 < ahead["sample_graph_rows"] <= 12_000 and ahead["cost"] > 0
    assert f"at 48,000 rows (graphs of 12,000; sampled in graphs of {ahead['sample_graph_rows']:,})" in out
    # what the choice there stood on: each candidate's recall at each list measured, the chosen one among them
    chosen_there = f"{ahead['quantization']} M={ahead['m']} ef_c={ahead['ef_construction']}"
    assert ahead["grid"][chosen_there] and set(ahead["grid"][chosen_there]) <= {"32", "64", "128", "256", "512"}
    assert all(0 <= r <= 1 for rs in ahead["grid"].values() for r in rs.values())
    # the range's ends: what samples reading recall 0.02 higher / lower choose there, where that differs
    for end, how, aim in (("eager", "higher", 0.88), ("wary", "lower", 0.92)):
        if ahead[end] is None:
            assert entry["projections"][0][end] is None
            continue
        other = ahead[end]
        label = f"{other['quantization']} M={other['m']} ef_c={other['ef_construction']}"
        assert label != chosen_there and max(ahead["grid"][label].values()) >= aim and other["cost"] > 0
        assert f"(a sample there reading 0.02 {how}) {label}" in out, out
        assert entry["projections"][0][end]["build_seconds"] > 0
    assert "graph_exponent" not in entry and f"G^{GRAPH_EXPONENT:.2f}, the default" in out
    # --project-rows builds the index twice and scales the lesser build (index_rebuild.py): the entry holds it
    assert "image_index: built again for the projection's base in " in out, out
    cpu = doc["phases_cpu_seconds"]
    assert entry["build_cpu_seconds"] == pytest.approx(min(cpu["build"], cpu["rebuild"]))
    (proj,) = entry["projections"]
    assert proj["rows"] == 48_000 and proj["graphs"] == 4 and proj["graph_exponent"] == GRAPH_EXPONENT
    assert (proj["structure"] is None) == ahead["same"]
    # the projection is sizing's arithmetic on what the entry recorded: the build, b, the structure chosen there
    again = project_build(built_from(entry), 48_000, 3000, 4).as_dict()
    assert again["build_cpu_seconds"] == pytest.approx(proj["build_cpu_seconds"])
    assert again["index_bytes"] == proj["index_bytes"]
    sized = resident_bytes(48_000, 512, ahead["quantization"], ahead["m"]) / resident_bytes(
        48_000, 512, entry["quantization"], entry["m"]
    )
    assert proj["index_bytes"] == pytest.approx(entry["memory_bytes"] * 4 * sized, rel=1e-6)
    assert f"image_index: projected at 48,000 rows (4 graphs of {proj['graph_rows']:,}" in out
    ev = orjson.loads(ok(cli("eval", "--target", f"chdb:{table}", "--queries", "20", "--seed", "3", "--json")))
    assert 0 < ev["brute_force_median_ms"] <= ev["brute_force_p99_ms"]


def test_a_build_with_given_parameters_reports_the_memory_it_takes_once_loaded(tmp_path: Path) -> None:
    """No check runs after a fixed build, so nothing would load it: one search does, and the entry says what
    ClickHouse holds (what the growth bench compares the projection with, for the structure the smallest size chose)."""
    db = loaded_chdb(tmp_path, "--segment-rows", "1500")
    report = tmp_path / "fixed.json"
    fixed = ("--quantization", "bf16", "--m", "12", "--ef-construction", "24", "--max-graphs", "4", "--no-progress")
    ok(cli("index", "--target", f"chdb:{db}", *fixed, "--report", str(report)))
    doc = orjson.loads(report.read_bytes())
    assert doc["phases_seconds"]["build"] > 0 and not doc["phases_seconds"].get("check")  # nothing checked it
    (entry,) = doc["indexes"]
    assert (entry["quantization"], entry["m"], entry["ef_construction"], entry["search_list"]) == ("bf16", 12, 24, None)
    formula = formula_bytes(12_000, 512, "bf16", 12)
    assert formula * 0.9 < entry["memory_bytes"] < formula * 1.15
    assert entry["cache_bytes"] is not None
    assert entry["memory_bytes"] < entry["cache_bytes"] < formula * 2 + entry["graphs"] * (20 << 20)
    assert "graph_exponent" not in entry  # b is not the build's: projections use growth.GRAPH_EXPONENT


def test_dry_run_projects_from_the_sample(table: Path, tmp_path: Path) -> None:
    report = tmp_path / "dry.json"
    args = ("--recall-target", "0.9", "--sample-rows", "4000", "--no-progress", "--dry-run", "--name", "dry_index")
    out = ok(cli("index", "--target", f"chdb:{table}", *args, "--project-rows", "1000000", "--report", str(report)))
    assert "dry_index: projected at 1,000,000 rows" in out and "--dry-run: nothing built" in out
    doc = orjson.loads(report.read_bytes())
    assert doc["phases_seconds"]["build"] == 0 and doc["indexes"][0]["projections"][0]["rows"] == 1_000_000


def test_the_bench_reads_a_range_within_when_the_measurement_is_near_either_end() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    from growth_report import verdict, verdict_range

    assert "(within ±25% of the range)" in verdict_range("build s", 160, 265, 265)  # the 2M line of the ladder
    assert "ratio 0.60–1.00" in verdict_range("build s", 160, 265, 265)
    assert "(within ±25% of the range)" in verdict_range("build s", 160, 265, 140)  # 160 / 140 = 1.14
    assert "OUTSIDE" in verdict_range("build s", 160, 265, 100) and "OUTSIDE" in verdict_range("build s", 160, 265, 400)
    assert "OUTSIDE" in verdict("build s", 160, 265)
