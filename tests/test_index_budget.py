"""`index --max-memory`: the tuner's grid under a memory budget (rescored i8/b1 variants, a quantization's
plateau skipped, the smallest structure that reaches the target chosen, or the memory it would need named), and
the command on real chdb: the budget refused when nothing fits, and a b1 index built, recorded and read back by
search and eval when only b1 fits."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from cli_run import cli, loaded_chdb, ok
from exact import chdb_rows

from ingest.core.config import TuneConfig
from ingest.core.errors import IndexTooLargeError
from ingest.stages.synth import SynthSpec, write_shard
from ingest.vector.graphs import PartStats, plan_layout
from ingest.vector.index_limits import unreached_error
from ingest.vector.sizing import MemoryBudget, resident_bytes
from ingest.vector.tune import (
    Candidate,
    Measured,
    Needed,
    TuneReport,
    by_memory,
    ceilinged,
    choose,
    default_grid,
    query_extras,
    rescoring_wanted,
    variants,
)

TUNE = ("--sample-rows", "4000", "--no-progress")


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return loaded_chdb(tmp_path_factory.mktemp("budget"))


def test_variants_rescore_quantized_builds_and_a_plateau_skips_the_quantization() -> None:
    assert [c.fetch_multiplier for c in variants(Candidate("bf16", 16, 64))] == [0]
    assert [c.fetch_multiplier for c in variants(Candidate("i8", 16, 64))] == [0, 4]
    assert [c.fetch_multiplier for c in variants(Candidate("b1", 16, 64))] == [4, 16, 64]
    assert variants(Candidate("i8", 16, 64), rescoring=False) == [Candidate("i8", 16, 64)]
    assert query_extras("bf16") == {} and query_extras("b1") == {"vector_search_with_rescoring": 1}
    assert Candidate("b1", 8, 24, 16).extras() == {
        "vector_search_with_rescoring": 1,
        "vector_search_index_fetch_multiplier": 16,
    }
    assert Candidate("b1", 8, 24, 16).label() == "b1 M=8 ef_c=24 rescore×16"
    assert "b1" not in {c.quantization for c in default_grid(("bf16", "b1"), (8,), (24,), rescoring=False)}
    # i8 unrescored flat at 0.86 (the quantization's ceiling): skipped; a curve still rising is not
    flat = Measured(Candidate("i8", 8, 24), 1.0, {32: 0.861, 64: 0.863})
    rising = Measured(Candidate("bf16", 8, 24), 1.0, {32: 0.80, 64: 0.90})
    assert ceilinged([flat, rising], 0.95) == {("i8", 0)}
    graph_bound = Measured(Candidate("bf16", 8, 24), 1.0, {32: 0.801, 64: 0.803})  # a larger M lifts it
    assert ceilinged([graph_bound], 0.95) == set()
    # under a budget: smallest projected memory first, then build cost
    order = by_memory(
        default_grid(("bf16", "i8", "b1"), (8, 16), (32,)), lambda c: resident_bytes(10**6, 512, c.quantization, c.m)
    )
    got = [(c.quantization, c.m) for c in order]
    assert got == [("b1", 8), ("b1", 16), ("i8", 8), ("i8", 16), ("bf16", 8), ("bf16", 16)]


def test_budget_choice_is_the_smallest_structure_reaching_the_target_or_names_what_is_needed() -> None:
    mem = {"bf16": 300, "i8": 200, "b1": 100}

    def memory(c: Candidate) -> int:
        return mem[c.quantization] + c.m

    b1 = Measured(Candidate("b1", 16, 64, 16), 3.0, {64: 0.96})
    i8 = Measured(Candidate("i8", 16, 64, 4), 2.0, {64: 0.97})
    bf16 = Measured(Candidate("bf16", 16, 64), 1.0, {32: 0.99})
    by_build = choose([b1, i8, bf16], 0.95)
    assert by_build.candidate == bf16.candidate and "cheapest build" in by_build.reason
    by_mem = choose([b1, i8, bf16], 0.95, memory)
    assert by_mem.candidate == b1.candidate and "smallest structure" in by_mem.reason
    # nothing within the budget reaches it: the best reachable, and what would be needed, in one message
    low = Measured(Candidate("b1", 8, 24, 64), 1.0, {32: 0.90, 64: 0.91})
    report = TuneReport(
        "image_embedding",
        1_000_000,
        512,
        20_000,
        50,
        0.95,
        (32, 64),
        (low, i8),
        replace(choose([low], 0.95, memory), needed=Needed(i8.candidate, 0.97, 123 << 20)),
        plan_layout([PartStats("all", 1_000_000, 123, 1 << 30)], 16, None, False),
    )
    budget = MemoryBudget(100 << 20, "--max-memory")
    err = unreached_error("image_index", report, TuneConfig(max_memory=100 << 20), budget)
    assert isinstance(err, IndexTooLargeError)
    assert str(err).startswith(
        "image_index: no candidate within --max-memory 100.0 MiB reaches recall@10 0.95 on the sample (best "
        "reachable 0.910: b1 M=8 ef_c=24 rescore×64 at search list 64, "
    ), str(err)
    assert str(err).endswith(
        "; i8 M=16 ef_c=64 rescore×4 reaches 0.970 and needs 123.0 MiB (--max-memory at least that)"
    )


def test_rescored_variants_are_weighed_under_a_budget_or_when_only_quantized_structures_fit() -> None:
    bf16, i8, b1 = Candidate("bf16", 12, 24), Candidate("i8", 12, 24), Candidate("b1", 12, 24)
    assert rescoring_wanted(False, [bf16, i8, b1]) is False  # no budget, bf16 fits: the fastest search wins
    assert rescoring_wanted(True, [bf16, i8, b1]) is True  # --max-memory: memory first, rescoring recovers recall
    assert rescoring_wanted(False, [i8, b1]) is True  # the machine's memory leaves only quantized structures


def test_nothing_in_the_grid_fits_is_refused_naming_the_smallest(table: Path) -> None:
    res = cli("index", "--target", f"chdb:{table}", "--max-memory", "1M", *TUNE)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    # 12,000 rows × 512, b1 M=8, resident: (12,000 × 64 + 12,000 × 8 × 8 + 12,000 × 32) × 1.2 = 2,304,000 bytes
    assert "no structure in the grid fits --max-memory 1.0 MiB and vector_similarity_index_cache_size" in lines[0]
    assert "for 12,000 rows × 512: the smallest, b1 M=8 ef_c=24, needs 2.2 MiB over --max-memory 1.0 MiB" in lines[0]
    assert chdb_rows(table, "SELECT name FROM system.data_skipping_indices WHERE table = 'laion'") == []


def test_max_memory_below_bf16_builds_the_smallest_structure_that_reaches_the_target(tmp_path: Path) -> None:
    """10,000 × 512 under --max-memory 6M: bf16 M=8 is resident at 12.8 MiB, i8 M=8 at 7.0 MiB, b1 M=8 at 1.8 MiB,
    so only b1 fits; it is rescored, and the settings recorded are the ones search and eval use."""
    src, db = tmp_path / "src", tmp_path / "db"
    write_shard(src, 0, SynthSpec(rows=10_000, seed=9))
    target = f"chdb:{db}"
    ok(cli("run", "--source", str(src), "--shards", "0", "--target", target, "--no-progress"))
    out = ok(cli("index", "--target", target, "--max-memory", "6M", *TUNE))
    assert re.search(r"chose b1 M=\d+ ef_c=\d+ rescore×\d+, search list \d+: smallest structure", out), out
    m = re.search(
        r"recall@10 (\d\.\d+) on the full index at hnsw_candidate_list_size_for_search=(\d+), "
        r"vector_search_with_rescoring=1, vector_search_index_fetch_multiplier=(\d+)",
        out,
    )
    assert m and float(m.group(1)) >= 0.95, out
    (row,) = chdb_rows(db, "SELECT type_full FROM system.data_skipping_indices WHERE name = 'image_index'")
    assert "'b1'" in str(row["type_full"])
    hit = orjson.loads(ok(cli("search", "--target", target, "--like-id", "7", "--json", "--limit", "3")))
    assert hit["settings"]["vector_search_with_rescoring"] == 1 and hit["index_used"] is True
    assert hit["settings"]["vector_search_index_fetch_multiplier"] == int(m.group(3))
    doc = orjson.loads(ok(cli("eval", "--target", target, "--queries", "40", "--seed", "5", "--json")))
    assert doc["search_list_source"].startswith("recorded when tuned") and doc["recall_at_10"] >= 0.9
