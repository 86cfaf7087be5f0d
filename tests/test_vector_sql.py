"""Pure pieces of the vector path: vector literals and JSON, index DDL and definition comparison, the search SQL's
index-friendly shape, EXPLAIN parsing, recall and mutation progress, TSV escaping for the encoder program."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.clickhouse.vector_sql import (
    ExistingIndex,
    VectorIndex,
    add_index_sql,
    explain_used_index,
    is_materialize_of,
    mutation_rows_done,
    parse_vector_json,
    recall_at_k,
    same_definition,
    search_sql,
    tsv_escape,
    vector_literal,
)
from ingest.core.errors import UsageError
from ingest.core.ids import TableRef
from ingest.udf.program import unescape_tsv
from ingest.vector.index import requests_for


def test_vector_literal_is_float32_exact() -> None:
    rng = np.random.default_rng(0)
    vec = rng.normal(size=512).astype(np.float32)
    lit = vector_literal(vec)
    back = np.array([float(x) for x in lit.strip("[]").split(",")], dtype=np.float64)
    assert np.array_equal(back.astype(np.float32), vec)
    assert np.array_equal(back, vec.astype(np.float64)), "each decimal is the float32 value itself"
    for bad in ([float("nan")], [], [[1.0]], [1e39]):
        with pytest.raises(UsageError):
            vector_literal(bad)  # type: ignore[arg-type]


def test_parse_vector_json_refuses_non_numbers() -> None:
    assert parse_vector_json("[1, 2.5, -3e-2]") == [1.0, 2.5, -0.03]
    for bad in ("", "{}", "[]", "[true]", '["1"]', "[1, null]", "not json"):
        with pytest.raises(UsageError):
            parse_vector_json(bad)


def test_index_ddl_and_comparison() -> None:
    ref = TableRef("db", "laion")
    ix = VectorIndex("image_index", "image_embedding", 512, m=16, ef_construction=64)
    assert add_index_sql(ref, ix) == (
        "ALTER TABLE `db`.`laion` ADD INDEX `image_index` `image_embedding` "
        "TYPE vector_similarity('hnsw', 'cosineDistance', 512, 'bf16', 16, 64)"
    )
    same = ExistingIndex("image_index", "vector_similarity", ix.type_full.replace(", ", ","), "`image_embedding`")
    assert same_definition(same, ix) and same.metric == "cosineDistance"
    assert not same_definition(ExistingIndex("image_index", "vector_similarity", ix.type_full, "text_embedding"), ix)
    with pytest.raises(UsageError):
        VectorIndex("x; DROP", "image_embedding", 512)
    with pytest.raises(UsageError):
        VectorIndex("x", "image_embedding", 512, metric="dotProduct")
    assert [r.name for r in requests_for("all", None, "L2Distance", "f32", 16, 64)] == ["image_index", "text_index"]


def test_search_sql_keeps_the_index_friendly_shape() -> None:
    sql = search_sql(TableRef("default", "laion"), "image_embedding", "cosineDistance", "[0.5,1.0]", 7)
    assert sql == (
        "SELECT id, url, caption, cosineDistance(`image_embedding`, [0.5,1.0]) AS distance "
        "FROM `default`.`laion` ORDER BY distance ASC LIMIT 7"
    )


def test_explain_parsing() -> None:
    plan = "\n".join(
        [
            "│     └──ReadFromMergeTree (default.laion)",
            "│           Indexes:",
            "│             PrimaryKey",
            "│               Condition: true",
            "│             Skip",
            "│               Name: image_index",
            "│               Description: vector_similarity GRANULARITY 100000000",
            "│               Granules: 13/24",
        ]
    )
    assert explain_used_index(plan) == "image_index"
    minmax = plan.replace("vector_similarity GRANULARITY 100000000", "minmax GRANULARITY 1")
    assert explain_used_index(minmax) is None
    assert explain_used_index("ReadFromMergeTree\n  Indexes:\n    PrimaryKey") is None


def test_recall_progress_and_mutation_matching() -> None:
    assert recall_at_k([1, 2, 3, 4], [1, 2, 5, 4], 4) == 0.75
    assert recall_at_k([9], [], 10) == 1.0
    parts = {"a": 100, "b": 300, "c": 600}
    assert mutation_rows_done(parts, ["b", "c"], [], 1000) == 100
    assert mutation_rows_done(parts, ["b", "c"], [(["c"], 0.5)], 1000) == 400
    assert mutation_rows_done(parts, [], [], 1000) == 1000
    assert is_materialize_of("(MATERIALIZE INDEX image_index)", "image_index")
    assert is_materialize_of("MATERIALIZE INDEX `image_index`", "image_index")
    assert not is_materialize_of("MATERIALIZE INDEX image_index2", "image_index")


def test_tsv_escape_round_trips_through_the_program_reader() -> None:
    for text in ("plain", "tab\there", "new\nline", "back\\slash", "\\t literal", "東京 🤖", "cr\rnul\0"):
        escaped = tsv_escape(text)
        assert "\n" not in escaped and "\t" not in escaped
        assert unescape_tsv(escaped.encode()).decode() == text
