"""`index --recall-target`, the pure part: the tuner's grid, its early stop and choice, the build-time projection,
the graph layout and sample plan, the memory sizing, the interleaved sample builds, and the check's margin line
(the command on real chdb is tests/test_index_tune.py)."""

from __future__ import annotations

import asyncio

import pytest

from ingest.clickhouse.vector_sql import VectorIndex, add_index_sql
from ingest.core.config import TuneConfig
from ingest.core.errors import UsageError
from ingest.core.ids import TableRef
from ingest.vector import tune_run
from ingest.vector.check import short_of_goal
from ingest.vector.graphs import GraphSize, PartStats, SamplePlan, graph_size, plan_layout, plan_sample
from ingest.vector.growth import GRAPH_EXPONENT
from ingest.vector.index import poll_interval
from ingest.vector.sizing import (
    MemoryBudget,
    Need,
    cheaper_that_fit,
    counted_bytes,
    formula_bytes,
    need,
    parse_bytes,
    resident_bytes,
)
from ingest.vector.tune import (
    BuildTime,
    Candidate,
    Measured,
    choose,
    default_grid,
    project_seconds,
    should_stop,
)


def test_choose_takes_the_cheapest_build_that_reaches_the_target() -> None:
    cheap_bad = Measured(Candidate("i8", 16, 64), 1.0, {64: 0.80, 256: 0.90})
    mid_ok = Measured(Candidate("bf16", 16, 64), 2.0, {64: 0.93, 256: 0.97})
    dear_ok = Measured(Candidate("bf16", 32, 128), 5.0, {64: 0.96, 256: 0.99})
    c = choose([dear_ok, cheap_bad, mid_ok], 0.95)
    assert (c.candidate, c.search_list, c.reached) == (Candidate("bf16", 16, 64), 256, True)
    assert "cheapest build" in c.reason and "1 other candidate" in c.reason
    # nobody reaches it: the best recall, said plainly
    none = choose([cheap_bad, mid_ok], 0.99)
    assert (none.candidate, none.search_list, none.reached) == (Candidate("bf16", 16, 64), 256, False)
    assert "no candidate reaches" in none.reason
    # ranked by build cost, reaching at a reasonable list beats a cheaper build that needs a longer one
    long_only = Measured(Candidate("bf16", 12, 64), 1.5, {256: 0.94, 512: 0.96})
    assert choose([long_only, dear_ok], 0.95).candidate == Candidate("bf16", 32, 128)
    assert choose([long_only, cheap_bad], 0.95).search_list == 512  # the only one that reaches it
    # under --max-memory the smallest structure still wins, at whatever list it needs
    assert choose([long_only, dear_ok], 0.95, lambda c: c.m).candidate == Candidate("bf16", 12, 64)


def test_grid_is_ordered_by_cost_and_stops_early() -> None:
    grid = default_grid(("i8", "bf16"), (16, 32), (32, 64, 128))
    assert grid[:3] == [Candidate("bf16", 16, 32), Candidate("i8", 16, 32), Candidate("bf16", 16, 64)]
    assert grid[-1].m * grid[-1].ef_construction == 32 * 128
    assert should_stop(Measured(grid[0], 1.0, {64: 0.96}), 0.95)
    assert not should_stop(Measured(grid[0], 1.0, {512: 0.96}), 0.95)  # only at an unreasonable list
    assert not should_stop(Measured(grid[0], 1.0, {64: 0.90}), 0.95)


def test_build_projection_is_rows_times_a_power_of_the_graph() -> None:
    assert project_seconds(2.0, 10_000, 10_000) == pytest.approx(2.0)
    assert project_seconds(2.0, 10_000, 100_000) == pytest.approx(2.0 * 10 * 10**GRAPH_EXPONENT)
    # graphs of a fixed size cost the same per row however many there are; larger ones by (G/g)^b
    assert project_seconds(2.0, 10_000, 100_000, 5_000, 5_000) == pytest.approx(20.0)
    assert project_seconds(2.0, 10_000, 100_000, 50_000, 10_000) == pytest.approx(20.0 * 5**GRAPH_EXPONENT)
    assert project_seconds(2.0, 10_000, 100_000, 40_000, 10_000, 0.5) == pytest.approx(40.0)  # b measured


def test_graphs_as_small_as_max_graphs_allows_and_merge_only_beyond_it() -> None:
    parts = [(61_440, 24), (38_560, 16)]  # 100k rows as our loader leaves them: 2,560 rows a granule
    assert graph_size(parts, 16) == GraphSize(3, 2560, 14)  # 8 + 6 graphs of 3 granules
    assert graph_size(parts, 100) == GraphSize(1, 2560, 40)
    assert graph_size(parts, 2) is None  # nothing below a whole part keeps it to 2: one graph per part
    assert graph_size([], 16) is None and graph_size(parts, 0) is None

    stats = [PartStats("all", r, g, r * 4000) for r, g in parts]
    two = plan_layout(stats, 16, None, indexed=False)  # merged too: the server would merge them after the build
    assert (two.merge, two.after, two.graphs, two.graph_rows) == (True, ((100_000, 40),), 14, 7500), two
    assert two.describe() == "graphs of 7,500 rows, 14 per search" and "merged first" in two.why
    kept = plan_layout([PartStats(str(i), r, g, 1) for i, (r, g) in enumerate(parts)], 16, None, indexed=False)
    assert (kept.merge, kept.graphs, kept.graph_rows) == (False, 14, 7680) and "one per partition" in kept.why
    assert kept.describe() == "graphs of 7,680 rows, 14 per search"
    many = [PartStats("all", 6000, 3, 24_000_000)] * 20  # more parts than --max-graphs: merged first
    merged = plan_layout(many, 16, None, indexed=False)
    assert merged.merge and merged.after == ((120_000, 60),) and merged.graph == GraphSize(4, 2000, 15)
    assert plan_layout(many, 16, 100_000_000, indexed=False).merge is False  # over the server's largest merge
    assert plan_layout(many, 16, None, indexed=True).merge is False  # a merge would rebuild the index it has
    per_partition = plan_layout([PartStats(str(i % 2), 6000, 3, 1) for i in range(20)], 4, None, False)
    assert per_partition.after == ((60_000, 30), (60_000, 30)) and per_partition.graphs <= 4
    one = plan_layout(stats, 1, None, indexed=False)
    assert one.merge and one.graph is None and one.describe() == "one graph per part, 1 per search"

    # the sample grows to hold two of the table's graphs (up to a cap), else it is one graph, said so
    g = GraphSize(25, 2558, 16)  # 1M rows in graphs of 63,950
    assert plan_sample(None, 20_000, 999_950) == SamplePlan(20_000, None, None)
    assert plan_sample(GraphSize(3, 2560, 14), 20_000, 99_950) == SamplePlan(20_000, GraphSize(3, 2560, 14), None)
    grown = plan_sample(g, 20_000, 999_950)
    assert (grown.rows, grown.graph) == (127_900, g) and grown.note and "grown to 127,900" in grown.note
    capped = plan_sample(g, 20_000, 999_950, cap=50_000)
    assert (capped.rows, capped.graph) == (50_000, None) and capped.note and "less than one graph" in capped.note
    assert [c.ef_construction for c in default_grid(("bf16",), (32,), (32, 64))] == [64]  # ef_c < 2·M left out
    ref = TableRef("default", "laion")
    one_per_part = VectorIndex("ix", "image_embedding", 512, m=16, ef_construction=32)
    assert "GRANULARITY" not in add_index_sql(ref, one_per_part)
    smaller = VectorIndex("ix", "image_embedding", 512, m=16, ef_construction=32, granularity=3)
    assert add_index_sql(ref, smaller).endswith("'bf16', 16, 32) GRANULARITY 3")
    with pytest.raises(UsageError, match="granularity=0"):
        VectorIndex("ix", "image_embedding", 512, granularity=0)
    # a short build is polled often, a long one every half second
    assert poll_interval(0.0) == 0.05 and poll_interval(4.0) == pytest.approx(0.2) and poll_interval(600) == 0.5


def test_sizing_resident_and_counted_fit_and_alternatives() -> None:
    # counted by the vector index cache: (rows × dim × bytes + rows × M × 8) × 2 + rows × 256
    assert counted_bytes(1_000_000, 512, "bf16", 16) == (1_000_000 * 512 * 2 + 1_000_000 * 16 * 8) * 2 + 256_000_000
    assert counted_bytes(1000, 512, "b1", 16) == (1000 * 64 + 1000 * 128) * 2 + 256_000
    assert formula_bytes(1000, 512, "b1", 16) == 1000 * 64 + 1000 * 128
    # resident in RAM: (formula + rows × 32) × 1.2
    assert resident_bytes(1000, 512, "b1", 8) == int((1000 * 64 + 1000 * 64 + 1000 * 32) * 1.2) == 192_000
    assert need(1000, 512, "b1", 8) + need(1000, 512, "b1", 8) == Need(384_000, 2 * 512_000)
    # the memory holds the resident bytes, the cache its count: either refuses, and is the one named
    budget = MemoryBudget(1 << 30, "--max-memory", cache_bytes=5 << 30)
    ram_bound = budget.check(Need(2 << 30, 1 << 30))
    assert not ram_bound.fits and ram_bound.limit_source == "--max-memory"
    cache_bound = budget.check(Need(1 << 29, 6 << 30))
    assert not cache_bound.fits and cache_bound.limit_source == "vector_similarity_index_cache_size"
    assert budget.fits(Need(1 << 29, 4 << 30)) and not budget.fits(Need(1 << 29, 6 << 30))
    assert budget.share(2) == MemoryBudget(1 << 29, "--max-memory", 5 << 29)
    # 1M × 512 in 1 GiB of RAM: bf16 M=16 is resident at 1.3 GiB; i8 and b1 fit
    grid = [("bf16", 16), ("i8", 16), ("b1", 16)]
    assert [q for q, _, _ in cheaper_that_fit(1_000_000, 512, 1, budget, grid)] == ["b1", "i8"]
    # a 1 GiB cache: i8 M=16 is counted at 1.4 GiB, only b1 (0.6 GiB) stays
    small_cache = MemoryBudget(8 << 30, "--max-memory", cache_bytes=1 << 30)
    assert [q for q, _, _ in cheaper_that_fit(1_000_000, 512, 1, small_cache, grid)] == ["b1"]
    assert parse_bytes("1G") == 1 << 30 and parse_bytes("512MiB") == 512 << 20 and parse_bytes("100") == 100


def test_least_costs_interleaves_the_builds_and_keeps_the_least_of_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rounds of [a, b], not a twice then b twice (a slow spell falls on both alike); the least of each kept."""
    order: list[str] = []
    costs = {"bf16": [9.0, 7.0], "i8": [5.0, 8.0]}

    async def fake_build_cost(on: object, cand: Candidate) -> BuildTime:
        order.append(cand.quantization)
        return BuildTime(1.0, costs[cand.quantization][order.count(cand.quantization) - 1])

    monkeypatch.setattr(tune_run, "build_cost", fake_build_cost)
    builds = [Candidate("bf16", 12, 24), Candidate("i8", 12, 24)]
    least = asyncio.run(tune_run.least_costs(None, builds, 2))  # type: ignore[arg-type]
    assert order == ["bf16", "i8", "bf16", "i8"]
    assert least == [7.0, 5.0]


def test_a_check_left_under_its_margin_says_so_and_names_a_costlier_structure() -> None:
    index = VectorIndex("image_index", "image_embedding", 512, "cosineDistance", "i8", 12, 32)
    cfg = TuneConfig(recall_target=0.95)
    assert short_of_goal(index, 0.971, cfg) is None  # target 0.95 + margin 0.02 reached
    said = short_of_goal(index, 0.964, cfg)
    assert said == (
        "image_index: recall@10 0.964 at the largest useful search list is under the 0.97 the check aims for "
        "(target 0.95 + 0.02): another sample of queries may read under the target; a costlier structure reaches "
        "it (e.g. --m 24 --ef-construction 64)"
    )
