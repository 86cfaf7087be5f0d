"""Pure SQL and settings for clip-retrieval's `/knn-service` and `/metadata` on a loaded table: no I/O here.

Nothing a client sends is spliced into this SQL except validated numbers: the query vector as float32 decimals
(`vector_literal` refuses NaN/inf), ids and limits as ints. Column names come from the table itself
(`system.columns`), validated as identifiers; the safety filter is a constant of ours.

Facts this relies on (checked on ClickHouse 26.9):
- with a WHERE clause the index is searched first and the filter applied after (`postfilter`), fetching
  `LIMIT × vector_search_index_fetch_multiplier` candidates, so a selective filter can return fewer than LIMIT rows;
  `prefilter` is exact (brute force over the rows that pass) and always returns LIMIT rows when they exist;
- without `vector_search_with_rescoring` the index's own distance comes back (bf16-rounded for a bf16 index) and the
  vector column is not read; with it, ClickHouse re-checks *every row* of each granule holding a candidate: on a
  table whose neighbours are scattered over its granules (LAION's, our synthetic) that is a scan of the whole vector
  column (202 MiB read per query on 100,000 rows, LIMIT 40 or 1000 alike), and so is selecting the vector column
  in the index query. `WHERE id IN (…)` on the primary key reads only the granules holding the rows asked: the
  exact distances and vectors of the hits are read that way (`exact_knn_sql`: the index query as the IN subquery,
  one round trip; its set is built before the primary key is analysed, so only the hits' granules are read);
- a user with `readonly = 1` may not set any query setting; `readonly = 2` reads only but may.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ingest.clickhouse.sql import quote_string
from ingest.core.ids import TableRef, quote_ident, validate_ident

SAFE_VALUES = ("UNLIKELY",)
"""`NSFW` values that pass `use_safety_model`: LAION's classifier said the image is unlikely to be unsafe.
`UNSURE`, `NSFW` and empty (no label) are filtered out."""
SAFETY_COLUMN = "NSFW"
VECTOR_COLUMNS = ("image_embedding", "text_embedding")
HIDDEN_COLUMNS = ("id", "similarity", *VECTOR_COLUMNS)
"""Not returned as metadata: the id is its own field, and the response's `similarity` is the query's, not the
caption-image similarity LAION stored under that name (clip-back overwrites it the same way)."""
MAX_FETCH_MULTIPLIER = 1000
"""ClickHouse's own bound on vector_search_index_fetch_multiplier."""
FILTER_HEADROOM = 2.0
CANCEL_ON_CLOSE = "cancel_http_readonly_queries_on_client_close"
"""A search whose client went away (the service cancels the handler, closing our connection) stops on the server
instead of running on for nobody; ClickHouse's default lets it finish."""
"""Candidates fetched per wanted row, over the share of rows that pass the filter."""


@dataclass(frozen=True, slots=True)
class KnnPlan:
    """One nearest-neighbour query: which column, how many rows, which filter and what to return."""

    column: str
    literal: str
    limit: int
    safe_only: bool
    metadata: tuple[str, ...]


def knn_sql(ref: TableRef, plan: KnnPlan) -> str:
    """The index-friendly shape (nothing but the distance in ORDER BY); metadata columns ride along, read lazily
    for the LIMIT rows only; never the vector column (see `exact_sql`)."""
    col = quote_ident(validate_ident(plan.column, "column"))
    cols = ["id", *(quote_ident(validate_ident(c, "column")) for c in plan.metadata)]
    where = f" WHERE {safety_filter()}" if plan.safe_only else ""
    return (
        f"SELECT {', '.join(cols)}, cosineDistance({col}, {plan.literal}) AS distance "
        f"FROM {ref.sql}{where} ORDER BY distance ASC LIMIT {int(plan.limit)}"
    )


def exact_knn_sql(ref: TableRef, plan: KnnPlan, with_vectors: bool, meta_rows: int) -> str:
    """One round trip: the index query's ids (its ORDER BY … LIMIT, the filter, the settings) as an IN subquery,
    then those rows read by primary key with their stored vector's exact distance. One row comes back: `hits`, the
    (id, distance) pairs best first; `meta`, the metadata tuples of the first `meta_rows` of them (what clip-back
    answers with); `vectors` for deduplicate. One JSON line parses ~15x faster than a thousand, and rows past
    `meta_rows` carry no metadata. No LIMIT outside: the outer query must not search the index again."""
    col = quote_ident(validate_ident(plan.column, "column"))
    meta = ", ".join(quote_ident(validate_ident(c, "column")) for c in plan.metadata)
    where = f" WHERE {safety_filter()}" if plan.safe_only else ""
    hits = f"SELECT id FROM {ref.sql}{where} ORDER BY cosineDistance({col}, {plan.literal}) ASC LIMIT {int(plan.limit)}"
    rank = "groupArray((distance, id))"
    outs = ["arraySort(h -> (h.2, h.1), groupArray((id, distance))) AS hits"]
    if plan.metadata:
        ranked = f"arraySort((m, k) -> k, groupArray(tuple({meta})), {rank})"
        outs.append(f"arraySlice({ranked}, 1, {int(meta_rows)}) AS meta")
    if with_vectors:
        outs.append(f"arraySort((v, k) -> k, groupArray(vector), {rank}) AS vectors")
    vector = f", {col} AS vector" if with_vectors else ""
    return (
        f"SELECT {', '.join(outs)} FROM (SELECT id{', ' + meta if meta else ''}, "
        f"cosineDistance({col}, {plan.literal}) AS distance{vector} FROM {ref.sql} WHERE id IN ({hits}))"
    )


def exact_sql(ref: TableRef, column: str, literal: str, ids: Sequence[int], with_vectors: bool) -> str:
    """The stored vector's cosine distance (and the vector, for deduplicate) of the rows the index found."""
    col = quote_ident(validate_ident(column, "column"))
    vector = f", {col} AS vector" if with_vectors else ""
    id_list = ", ".join(str(int(i)) for i in ids)
    return f"SELECT id, cosineDistance({col}, {literal}) AS distance{vector} FROM {ref.sql} WHERE id IN ({id_list})"


def safety_filter() -> str:
    values = ", ".join(quote_string(v) for v in SAFE_VALUES)
    return f"{quote_ident(SAFETY_COLUMN)} IN ({values})"


def granule_rows_sql(ref: TableRef) -> str:
    """Rows per granule of the table's active parts: the rows a by-id read decompresses per hit."""
    return (
        "SELECT sum(rows) AS rows, sum(marks) AS marks FROM system.parts "
        f"WHERE database = {quote_string(ref.database)} AND table = {quote_string(ref.table)} AND active"
    )


def safe_share_sql(ref: TableRef) -> str:
    """The share of rows that pass the safety filter: sizes the postfilter's fetch multiplier."""
    return f"SELECT count() AS n, countIf({safety_filter()}) AS safe FROM {ref.sql}"


def metadata_sql(ref: TableRef, ids: Sequence[int], metadata: Sequence[str]) -> str:
    cols = ", ".join(["id", *(quote_ident(validate_ident(c, "column")) for c in metadata)])
    id_list = ", ".join(str(int(i)) for i in ids)
    return f"SELECT {cols} FROM {ref.sql} WHERE id IN ({id_list})"


def columns_sql(ref: TableRef) -> str:
    return (
        "SELECT name, type FROM system.columns WHERE "
        f"database = {quote_string(ref.database)} AND table = {quote_string(ref.table)} ORDER BY position"
    )


def setting_sql(names: Sequence[str]) -> str:
    listed = ", ".join(quote_string(n) for n in names)
    return f"SELECT name, value FROM system.settings WHERE name IN ({listed})"


def fetch_multiplier(safe_share: float) -> int:
    """Candidates per wanted row so that a postfiltered search still finds LIMIT passing rows (2× headroom)."""
    if safe_share <= 0:
        return MAX_FETCH_MULTIPLIER
    return max(1, min(MAX_FETCH_MULTIPLIER, math.ceil(FILTER_HEADROOM / safe_share)))


def knn_settings(*, filtered: bool, prefilter: bool, multiplier: int, search_list: int | None) -> dict[str, str | int]:
    """Per-query settings: the filter strategy, the HNSW candidate list (exact distances come from `exact_sql`)."""
    settings: dict[str, str | int] = {CANCEL_ON_CLOSE: 1}
    if filtered:
        settings["vector_search_filter_strategy"] = "prefilter" if prefilter else "postfilter"
        if not prefilter:
            settings["vector_search_index_fetch_multiplier"] = int(multiplier)
    if search_list is not None:
        settings["hnsw_candidate_list_size_for_search"] = int(search_list)
    return settings
