"""The search behind `/knn-service` and `/metadata`: one served table, learned once, queried read-only.

At start we learn what every request needs and would otherwise ask again: the vector dimension of each embedding
column, its vector index and the search list it was tuned for, the metadata columns, the share of rows that pass
the safety filter (it sizes the postfilter's fetch multiplier) and `max_limit_for_vector_search_queries`.
The daemon's served table grows: `refresh()` learns them again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ingest.clickhouse.knn_sql import (
    HIDDEN_COLUMNS,
    SAFETY_COLUMN,
    VECTOR_COLUMNS,
    KnnPlan,
    columns_sql,
    exact_knn_sql,
    fetch_multiplier,
    granule_rows_sql,
    knn_settings,
    knn_sql,
    metadata_sql,
    safe_share_sql,
    setting_sql,
)
from ingest.clickhouse.vector_sql import MAX_INDEXED_LIMIT, column_dim_sql, vector_literal
from ingest.core.config import QueryConfig
from ingest.core.errors import BadRequestError, ConfigError, TargetError, UsageError
from ingest.core.ids import TableRef
from ingest.core.schema import DEFAULT_INDEX_GRANULARITY
from ingest.serve.dedup import duplicates
from ingest.serve.protocol import KnnRequest
from ingest.sinks.base import Sink
from ingest.vector.index import vector_indexes
from ingest.vector.metadata import recorded_for
from ingest.vector.search import index_on

log = logging.getLogger(__name__)

READONLY_CODE = 164
BUSY_INDEX_CODE = 117
BUSY_INDEX_TRIES = 8
"""ClickHouse's HNSW graph has a fixed number of search slots (usearch's thread limit): concurrent searches over
it can be refused with code 117 "Too many threads". The refusal is momentary: such a query is retried, briefly."""
EF_SETTING = "hnsw_candidate_list_size_for_search"
SLOW_GRANULE_ROWS = 4 * DEFAULT_INDEX_GRANULARITY
"""Above this many rows per granule serve warns at start that exact similarity is slow on this table."""


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """How the service searches: fixed at start, the same for every request."""

    index_name: str
    ef_search: int | None = None
    rescore: bool = True
    """Each hit's distance computed on its stored Float32 vector, by id after the index query (else: the index's own,
    bf16-rounded). Not ClickHouse's `vector_search_with_rescoring`: that scans the vector column (knn_sql.py)."""


@dataclass
class TableFacts:
    dims: dict[str, int] = field(default_factory=dict)
    indexed: dict[str, str | None] = field(default_factory=dict)
    search_list: dict[str, int | None] = field(default_factory=dict)
    exact_index: dict[str, bool] = field(default_factory=dict)
    metadata: tuple[str, ...] = ()
    rows: int = 0
    safe_rows: int = 0
    max_limit: int = MAX_INDEXED_LIMIT
    rows_per_granule: float = 0.0

    @property
    def has_safety(self) -> bool:
        return SAFETY_COLUMN in self.metadata

    @property
    def multiplier(self) -> int:
        return fetch_multiplier(self.safe_rows / self.rows if self.rows else 0.0)


@dataclass(frozen=True, slots=True)
class KnnAnswer:
    results: list[dict[str, Any]]
    capped: int | None
    prefiltered: bool


class Searcher:
    """Nearest rows and metadata of one table, through one connected sink."""

    def __init__(self, sink: Sink, q: QueryConfig, opts: ServeOptions) -> None:
        self.sink = sink
        self.ref: TableRef = q.table
        self.opts = opts
        self.facts = TableFacts()

    async def refresh(self) -> TableFacts:
        """Learn the table's facts; a user the server keeps from setting query settings is refused here."""
        try:
            self.facts = await self._learn()
        except TargetError as exc:
            if exc.code == READONLY_CODE:
                raise ConfigError(
                    "the ClickHouse user has readonly=1, which forbids the per-query settings search needs "
                    "(filter strategy, rescoring, candidate list): give it readonly=2 (reads only, may set settings)"
                ) from None
            raise
        return self.facts

    async def _learn(self) -> TableFacts:
        sink, ref = self.sink, self.ref
        if not sink.info.vector_index:  # the settings every query sends (filter strategy, rescoring) came in 25.8
            raise UsageError(
                f"ClickHouse {sink.info.version} has no vector search: serve needs ClickHouse >= 25.8 (or chdb)"
            )
        await sink.query("SELECT 1 AS ok", {"vector_search_filter_strategy": "prefilter"})  # settings allowed?
        cols = await sink.query(columns_sql(ref))
        if not cols:
            raise UsageError(f"no table {ref.key}: load it first (laion-ingest run)")
        names = [str(c["name"]) for c in cols]
        facts = TableFacts(metadata=tuple(n for n in names if n not in HIDDEN_COLUMNS))
        indexes = await vector_indexes(sink, ref) if sink.info.vector_index else []
        for column in VECTOR_COLUMNS:
            if column not in names:
                continue
            dim_rows = await sink.query(column_dim_sql(ref, column))
            facts.dims[column] = int(dim_rows[0]["d"]) if dim_rows else 0
            index = index_on(indexes, column)
            facts.indexed[column] = index.name if index is not None and index.metric == "cosineDistance" else None
            facts.exact_index[column] = index is not None and "'f32'" in index.type_full.replace(" ", "")
            recorded = await recorded_for(sink, ref, index) if index is not None else None
            facts.search_list[column] = (
                self.opts.ef_search
                if self.opts.ef_search is not None
                else (recorded.settings.get(EF_SETTING) if recorded is not None else None)
            )
        if facts.has_safety:
            share = await sink.query(safe_share_sql(ref))
            facts.rows, facts.safe_rows = int(share[0]["n"]), int(share[0]["safe"])
        granules = await sink.query(granule_rows_sql(ref))
        if granules and int(granules[0]["marks"] or 0) > 0:
            facts.rows_per_granule = int(granules[0]["rows"]) / int(granules[0]["marks"])
        limits = await sink.query(setting_sql(["max_limit_for_vector_search_queries"]))
        if limits:
            facts.max_limit = int(limits[0]["value"])
        return facts

    def column_for(self, req: KnnRequest) -> str:
        if req.column not in self.facts.dims:
            raise BadRequestError(f"modality {req.modality}: {self.ref.key} has no {req.column} column")
        return req.column

    def check_vector(self, column: str, vector: npt.NDArray[np.float32] | tuple[float, ...]) -> str | None:
        """The vector as a literal; None while the table has no rows (a daemon before its first shard)."""
        dim = self.facts.dims[column]
        if dim == 0:
            return None
        if len(vector) != dim:
            raise BadRequestError(f"the query vector has {len(vector)} values; {column} holds {dim}-d vectors")
        try:
            return vector_literal(vector)
        except UsageError as exc:
            raise BadRequestError(str(exc)) from None

    def plan(self, req: KnnRequest, column: str, literal: str) -> tuple[KnnPlan, dict[str, str | int]]:
        facts = self.facts
        safe_only = req.use_safety_model and facts.has_safety
        plan = KnnPlan(column, literal, min(req.num_result_ids, facts.max_limit), safe_only, facts.metadata)
        settings = knn_settings(
            filtered=safe_only, prefilter=False, multiplier=facts.multiplier, search_list=facts.search_list.get(column)
        )
        return plan, settings

    def index_query(self, req: KnnRequest, column: str, literal: str) -> tuple[str, dict[str, str | int]]:
        """The index query alone (ids, metadata, the index's own distances): `--index-distances` sends just this."""
        plan, settings = self.plan(req, column, literal)
        return knn_sql(self.ref, plan), settings

    def first_query(self, req: KnnRequest, column: str, literal: str) -> tuple[str, dict[str, str | int]]:
        """The one SQL and settings a request is answered with (the bench sends the same to ClickHouse): the index
        query, wrapped in the by-id read of the hits' stored vectors when similarities are exact or deduplicate
        needs the vectors."""
        plan, settings = self.plan(req, column, literal)
        if self.exact_form(req, column):
            meta_rows = plan.limit if req.deduplicate else req.num_images  # deduplicate may promote any row
            return exact_knn_sql(self.ref, plan, req.deduplicate, meta_rows), settings
        return knn_sql(self.ref, plan), settings

    def exact_form(self, req: KnnRequest, column: str) -> bool:
        return self.rescores(column) or req.deduplicate

    def rescores(self, column: str) -> bool:
        return self.opts.rescore and not self.facts.exact_index.get(column, False)

    def slow_layout(self) -> str | None:
        """One line when the table's granules make exact similarity slow (each hit reads its whole granule of the
        vector column): said once at start."""
        per = self.facts.rows_per_granule
        if per <= SLOW_GRANULE_ROWS or not any(self.rescores(c) for c in self.facts.dims):
            return None
        mib = per * max(self.facts.dims.values()) * 4 / 2**20
        return (
            f"{self.ref.key} has {per:,.0f} rows per granule: exact similarity reads ~{mib:.1f} MiB of vectors per "
            f"hit (~{mib * 40:.0f} MiB for 40); a table `run` creates now has {DEFAULT_INDEX_GRANULARITY} "
            "(copy it into one, see README), or serve --index-distances"
        )

    async def knn(self, req: KnnRequest, column: str, literal: str | None) -> KnnAnswer:
        facts = self.facts
        if literal is None:
            return KnnAnswer([], None, False)
        limit = min(req.num_result_ids, facts.max_limit)
        capped = limit if limit < req.num_result_ids else None
        sql, settings = self.first_query(req, column, literal)
        exact = self.exact_form(req, column)
        rows = await self.search(sql, settings, exact)
        prefiltered = False
        if req.use_safety_model and facts.has_safety and len(rows) < limit and facts.safe_rows > len(rows):
            # the postfilter kept too few: the exact prefiltered search returns every passing row there is
            settings = knn_settings(filtered=True, prefilter=True, multiplier=1, search_list=None)
            rows = await self.search(sql, settings, exact)
            prefiltered = True
        if req.deduplicate and rows:
            drop = duplicates(np.asarray([r["vector"] for r in rows], dtype=np.float32))
            rows = [r for i, r in enumerate(rows) if i not in drop]
        return KnnAnswer(shape(rows, req.num_images, facts.metadata), capped, prefiltered)

    async def search(self, sql: str, settings: dict[str, str | int], exact: bool = False) -> list[dict[str, Any]]:
        """The rows of a knn query; `exact`: of `exact_knn_sql`'s one-row answer."""
        for attempt in range(BUSY_INDEX_TRIES):
            try:
                rows = await self.sink.query(sql, settings)
                return unpack(rows[0] if rows else {}, self.facts.metadata) if exact else rows
            except TargetError as exc:
                if exc.code != BUSY_INDEX_CODE or "Too many threads" not in str(exc) or attempt == BUSY_INDEX_TRIES - 1:
                    raise
                await asyncio.sleep(min(0.1, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    async def metadata(self, ids: tuple[int, ...]) -> list[dict[str, Any]]:
        """`[{"id", "metadata"}]` in the order asked; an unknown id gets `metadata: null`, as clip-back's does."""
        if not ids:
            return []
        rows = await self.sink.query(metadata_sql(self.ref, sorted(set(ids)), self.facts.metadata))
        found = {int(r["id"]): {c: r.get(c) for c in self.facts.metadata} for r in rows}
        return [{"id": i, "metadata": found.get(i)} for i in ids]

    async def ping(self) -> None:
        await self.sink.query("SELECT 1 AS ok")


def unpack(doc: dict[str, Any], metadata: tuple[str, ...]) -> list[dict[str, Any]]:
    """`exact_knn_sql`'s one row as rows best first: id, distance, the metadata where sent, the vector if asked."""
    meta: list[Any] = doc.get("meta") or []
    vectors: list[Any] | None = doc.get("vectors")
    rows: list[dict[str, Any]] = []
    for i, (hit_id, distance) in enumerate(doc.get("hits") or []):
        row: dict[str, Any] = {"id": hit_id, "distance": distance}
        if i < len(meta):
            row.update(meta[i] if isinstance(meta[i], dict) else zip(metadata, meta[i], strict=True))
        if vectors is not None:
            row["vector"] = vectors[i]
        rows.append(row)
    return rows


def shape(rows: list[dict[str, Any]], num_images: int, metadata: tuple[str, ...]) -> list[dict[str, Any]]:
    """clip-back's list: metadata columns then `id` and `similarity` for the first `num_images`, the rest bare."""
    out: list[dict[str, Any]] = []
    for rank, row in enumerate(rows):
        item: dict[str, Any] = {c: row.get(c) for c in metadata} if rank < num_images else {}
        item["id"] = int(row["id"])
        item["similarity"] = 1.0 - float(row["distance"])
        out.append(item)
    return out
