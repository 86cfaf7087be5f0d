"""Pure parts of the search service: request validation (clip-back's precedence), dedup, SQL shape."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.clickhouse.knn_sql import KnnPlan, exact_knn_sql, exact_sql, fetch_multiplier, knn_settings, knn_sql
from ingest.core.errors import BadRequestError
from ingest.core.ids import TableRef
from ingest.serve.dedup import duplicates
from ingest.serve.protocol import parse_knn, parse_metadata


def test_input_precedence_follows_clip_back() -> None:
    base = {"modality": "text", "num_images": 3, "embedding_input": [0.5, 0.5]}
    assert parse_knn({**base, "text": "a", "image": "b", "image_url": "http://x"}, 1000).input_kind == "text"
    assert parse_knn({**base, "text": "", "image": "b", "image_url": "http://x"}, 1000).input_kind == "image"
    assert parse_knn({**base, "text": None, "image_url": "http://x"}, 1000).input_kind == "image_url"
    req = parse_knn(base, 1000)
    assert req.input_kind == "embedding_input" and req.vector == (0.5, 0.5) and req.column == "text_embedding"
    assert req.num_result_ids == 3 and not req.deduplicate and not req.use_safety_model


def test_ignored_options_are_named() -> None:
    doc = {"modality": "image", "num_images": 1, "embedding_input": [1.0], "use_violence_detector": True}
    doc |= {"aesthetic_score": 9, "aesthetic_weight": 0.5, "use_mclip": False}
    assert parse_knn(doc, 1000).ignored == ("use_violence_detector", "aesthetic_score", "aesthetic_weight")
    assert (
        parse_knn({**doc, "aesthetic_score": "", "aesthetic_weight": "", "use_violence_detector": False}, 9).ignored
        == ()
    )


@pytest.mark.parametrize(
    "doc",
    [
        {"num_images": 1, "embedding_input": [1.0]},
        {"modality": "image", "embedding_input": [1.0]},
        {"modality": "image", "num_images": 1001, "embedding_input": [1.0]},
        {"modality": "image", "num_images": True, "embedding_input": [1.0]},
        {"modality": "image", "num_images": 1, "embedding_input": [[1.0]]},
        {"modality": "image", "num_images": 1, "embedding_input": []},
        {"modality": "image", "num_images": 1, "text": 5},
        {"modality": "image", "num_images": 1, "embedding_input": [1.0], "indice_name": 3},
    ],
)
def test_bad_bodies_are_refused(doc: dict[str, object]) -> None:
    with pytest.raises(BadRequestError):
        parse_knn(doc, 1000)


def test_metadata_ids_must_be_int64() -> None:
    assert parse_metadata({"ids": [1, -2]}).ids == (1, -2)
    for bad in ({"ids": [1.5]}, {"ids": [2**63]}, {"ids": [True]}, {}):
        with pytest.raises(BadRequestError):
            parse_metadata(bad)


def brute_components(vectors: np.ndarray, threshold: float) -> set[int]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sim = unit @ unit.T > threshold
    label = list(range(len(vectors)))
    changed = True
    while changed:  # propagate the smallest index through every link until nothing changes
        changed = False
        for i in range(len(vectors)):
            for j in range(len(vectors)):
                if sim[i, j] and label[j] > label[i]:
                    label[j] = label[i]
                    changed = True
    return {i for i in range(len(vectors)) if label[i] != i}


def test_dedup_matches_connected_components() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 16))
    vectors = np.concatenate([c + rng.normal(scale=0.25, size=(8, 16)) for c in centres]).astype(np.float32)
    rng.shuffle(vectors)
    want = brute_components(vectors, 0.94)
    assert want and duplicates(vectors) == want
    assert duplicates(vectors[:1]) == set()


def test_knn_sql_keeps_client_values_out() -> None:
    plan = KnnPlan("image_embedding", "[0.5,0.25]", 40, True, ("url", "caption", "NSFW"))
    sql = knn_sql(TableRef("default", "laion"), plan)
    assert sql.endswith("ORDER BY distance ASC LIMIT 40")
    assert "WHERE `NSFW` IN ('UNLIKELY')" in sql
    assert fetch_multiplier(1 / 3) == 6 and fetch_multiplier(1.0) == 2 and fetch_multiplier(0.0) == 1000
    assert "image_embedding AS vector" not in sql  # selecting it would scan the vector column (knn_sql.py)
    assert knn_settings(filtered=True, prefilter=False, multiplier=6, search_list=None) == {
        "cancel_http_readonly_queries_on_client_close": 1,
        "vector_search_filter_strategy": "postfilter",
        "vector_search_index_fetch_multiplier": 6,
    }
    exact = exact_sql(TableRef("default", "laion"), "image_embedding", "[0.5,0.25]", [3, 1], True)
    assert exact.endswith("AS vector FROM `default`.`laion` WHERE id IN (3, 1)"), exact
    one = exact_knn_sql(TableRef("default", "laion"), plan, True, 7)
    hits = (
        "SELECT id FROM `default`.`laion` WHERE `NSFW` IN ('UNLIKELY') "
        "ORDER BY cosineDistance(`image_embedding`, [0.5,0.25]) ASC LIMIT 40"
    )
    assert f"WHERE id IN ({hits}))" in one, one
    assert "LIMIT" not in one.replace(hits, ""), one  # no LIMIT outside: the outer query must not search again
    assert "arraySlice(" in one and ", 1, 7) AS meta" in one, one
    assert "`image_embedding` AS vector" in one and "AS vector" not in exact_knn_sql(TableRef("d", "t"), plan, False, 1)


def test_unpack_one_row_answer() -> None:
    from ingest.serve.engine import unpack

    doc = {"hits": [[5, 0.0], [3, 0.25], [9, 0.5]], "meta": [["u5", "c5"], {"url": "u3", "caption": "c3"}]}
    rows = unpack(doc, ("url", "caption"))
    assert rows == [
        {"id": 5, "distance": 0.0, "url": "u5", "caption": "c5"},
        {"id": 3, "distance": 0.25, "url": "u3", "caption": "c3"},
        {"id": 9, "distance": 0.5},
    ]
    assert unpack({}, ("url",)) == []
    with_vectors = unpack({"hits": [[1, 0.1]], "meta": [["u"]], "vectors": [[0.5, 0.5]]}, ("url",))
    assert with_vectors == [{"id": 1, "distance": 0.1, "url": "u", "vector": [0.5, 0.5]}]


def test_coarse_granules_are_said_once_at_start() -> None:
    from ingest.core.config import QueryConfig, TargetConfig
    from ingest.core.target import parse_target
    from ingest.serve.engine import Searcher, ServeOptions, TableFacts

    q = QueryConfig(TargetConfig(parse_target("http://127.0.0.1:1")), TableRef("default", "laion"))
    searcher = Searcher(None, q, ServeOptions(index_name="laion"))  # type: ignore[arg-type]  # no I/O here
    searcher.facts = TableFacts(dims={"image_embedding": 512}, rows_per_granule=2450.0)
    line = searcher.slow_layout()
    assert line is not None and "2,450 rows per granule" in line and "~4.8 MiB of vectors per hit" in line, line
    searcher.facts = TableFacts(dims={"image_embedding": 512}, rows_per_granule=256.0)
    assert searcher.slow_layout() is None
    searcher.facts = TableFacts(
        dims={"image_embedding": 512}, rows_per_granule=2450.0, exact_index={"image_embedding": True}
    )
    assert searcher.slow_layout() is None  # an f32 index's distances are exact already: no by-id read
    searcher.opts = ServeOptions(index_name="laion", rescore=False)
    searcher.facts = TableFacts(dims={"image_embedding": 512}, rows_per_granule=2450.0)
    assert searcher.slow_layout() is None  # --index-distances reads no vectors
