"""Pure SQL and arithmetic for the vector index, search and recall: no I/O here.

Facts these builders rely on (checked on chdb 26.9, documented for ClickHouse >= 25.8):
- `vector_similarity` is a skip index; leaving out GRANULARITY gives its default (100 million granules, i.e.
  one HNSW graph per part). `GRANULARITY g` builds one graph per g granules instead; a search visits every
  graph with its own candidate list and keeps the best k of all (ClickHouse's 02354_vector_search_queries
  test: "12 rows, index_granularity = 3, GRANULARITY = 2 --> 4 granules, 2 indexed block").
- The index serves `ORDER BY <metric>(column, constant) LIMIT k` only when the metric is the index's own, the
  ORDER BY has nothing after the distance (a tie-breaker column disables it) and k is at most
  `max_limit_for_vector_search_queries` (1000).
- `MATERIALIZE INDEX` skips parts that already carry the index, so re-running it only builds what is missing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import median

import numpy as np
import orjson

from ingest.clickhouse.sql import EMBEDDING_COLUMNS, quote_string
from ingest.core.errors import UsageError
from ingest.core.ids import TableRef, quote_ident, validate_ident

METRICS = ("cosineDistance", "L2Distance")
QUANTIZATIONS = ("bf16", "f16", "f32", "i8", "b1")
DEFAULT_INDEX_NAMES = {"image_embedding": "image_index", "text_embedding": "text_index"}
DEFAULT_METRIC = "cosineDistance"
DEFAULT_QUANTIZATION = "bf16"
DEFAULT_M = 64
DEFAULT_EF_CONSTRUCTION = 256
MAX_INDEXED_LIMIT = 1000
"""ClickHouse's default `max_limit_for_vector_search_queries`: a larger LIMIT is answered by brute force."""
EF_SEARCH_SETTING = "hnsw_candidate_list_size_for_search"


@dataclass(frozen=True, slots=True)
class VectorIndex:
    """One HNSW index as we would create it; `type_full` is spelled the way system tables print it."""

    name: str
    column: str
    dim: int
    metric: str = DEFAULT_METRIC
    quantization: str = DEFAULT_QUANTIZATION
    m: int = DEFAULT_M
    ef_construction: int = DEFAULT_EF_CONSTRUCTION
    granularity: int | None = None
    """Granules per HNSW graph (the index's GRANULARITY); None = ClickHouse's default, one graph per part."""

    def __post_init__(self) -> None:
        validate_ident(self.name, "index")
        validate_ident(self.column, "column")
        if self.metric not in METRICS:
            raise UsageError(f"unknown metric {self.metric!r}: use one of {', '.join(METRICS)}")
        if self.quantization not in QUANTIZATIONS:
            raise UsageError(f"unknown quantization {self.quantization!r}: use one of {', '.join(QUANTIZATIONS)}")
        bad_granularity = self.granularity is not None and self.granularity < 1
        if self.dim < 1 or self.m < 2 or self.ef_construction < 1 or bad_granularity:
            raise UsageError(
                f"bad index parameters: dim={self.dim}, m={self.m}, ef_construction={self.ef_construction}, "
                f"granularity={self.granularity}"
            )

    @property
    def type_full(self) -> str:
        return (
            f"vector_similarity('hnsw', {quote_string(self.metric)}, {int(self.dim)}, "
            f"{quote_string(self.quantization)}, {int(self.m)}, {int(self.ef_construction)})"
        )

    @property
    def granularity_sql(self) -> str:
        return f" GRANULARITY {int(self.granularity)}" if self.granularity is not None else ""

    def describe(self) -> str:
        return f"{self.type_full}{self.granularity_sql} on {self.column}"


@dataclass(frozen=True, slots=True)
class ExistingIndex:
    """A skip index as `system.data_skipping_indices` reports it."""

    name: str
    type: str
    type_full: str
    expr: str

    @property
    def column(self) -> str:
        return self.expr.strip().strip("`")

    @property
    def is_vector(self) -> bool:
        return self.type == "vector_similarity"

    @property
    def metric(self) -> str | None:
        """The distance function named in `vector_similarity('hnsw', 'metric', ...)`."""
        m = re.match(r"^vector_similarity\(\s*'[^']*'\s*,\s*'([^']+)'", self.type_full)
        return m.group(1) if m else None

    def describe(self) -> str:
        return f"{self.type_full} on {self.column}"


def default_index_name(column: str) -> str:
    return DEFAULT_INDEX_NAMES.get(column, f"{column}_index")


def index_columns(column: str) -> tuple[str, ...]:
    """`all` means both embedding columns; anything else must be one of them."""
    if column == "all":
        return EMBEDDING_COLUMNS
    if column not in EMBEDDING_COLUMNS:
        raise UsageError(f"unknown column {column!r}: use {', '.join(EMBEDDING_COLUMNS)} or all")
    return (column,)


def same_definition(existing: ExistingIndex, wanted: VectorIndex) -> bool:
    """Whitespace-insensitive comparison of type and column (GRANULARITY is the server default on both)."""
    squash = re.compile(r"\s+")
    return existing.column == wanted.column and squash.sub("", existing.type_full) == squash.sub("", wanted.type_full)


# ---- DDL and system-table queries -------------------------------------------------------------------------


def add_index_sql(ref: TableRef, index: VectorIndex) -> str:
    """GRANULARITY only when the index asks for smaller graphs than one per part (ClickHouse's default)."""
    return (
        f"ALTER TABLE {ref.sql} ADD INDEX {quote_ident(index.name)} {quote_ident(index.column)} "
        f"TYPE {index.type_full}{index.granularity_sql}"
    )


def materialize_index_sql(ref: TableRef, name: str) -> str:
    """Run with `mutations_sync = 0`: the build is a background mutation we can watch."""
    return f"ALTER TABLE {ref.sql} MATERIALIZE INDEX {quote_ident(validate_ident(name, 'index'))}"


def drop_index_sql(ref: TableRef, name: str) -> str:
    return f"ALTER TABLE {ref.sql} DROP INDEX IF EXISTS {quote_ident(validate_ident(name, 'index'))}"


def _where_table(ref: TableRef, table_col: str = "table") -> str:
    return f"database = {quote_string(ref.database)} AND {table_col} = {quote_string(ref.table)}"


def table_exists_sql(ref: TableRef) -> str:
    return f"SELECT count() AS n FROM system.tables WHERE {_where_table(ref, 'name')}"


def indexes_sql(ref: TableRef) -> str:
    return (
        f"SELECT name, type, type_full, expr FROM system.data_skipping_indices WHERE {_where_table(ref)} ORDER BY name"
    )


def dimension_sql(ref: TableRef, column: str) -> str:
    """Row count and the shortest/longest vector (reads only the arrays' sizes)."""
    col = quote_ident(validate_ident(column, "column"))
    return f"SELECT count() AS n, min(length({col})) AS lo, max(length({col})) AS hi FROM {ref.sql}"


def parts_sql(ref: TableRef) -> str:
    return f"SELECT name, rows FROM system.parts WHERE {_where_table(ref)} AND active"


def mutations_sql(ref: TableRef) -> str:
    return (
        "SELECT mutation_id, command, parts_to_do, parts_to_do_names, is_done, latest_fail_reason "
        f"FROM system.mutations WHERE {_where_table(ref)}"
    )


def merges_sql(ref: TableRef) -> str:
    return f"SELECT source_part_names, progress FROM system.merges WHERE {_where_table(ref)} AND is_mutation = 1"


def kill_mutation_sql(ref: TableRef, mutation_id: str) -> str:
    return f"KILL MUTATION WHERE {_where_table(ref)} AND mutation_id = {quote_string(mutation_id)}"


def is_materialize_of(command: str, name: str) -> bool:
    """Whether a `system.mutations.command` is `MATERIALIZE INDEX name` (servers print it with or without
    parentheses and backquotes)."""
    text = command.replace("`", "")
    return re.search(rf"MATERIALIZE INDEX {re.escape(name)}\b", text) is not None


def mutation_rows_done(
    part_rows: Mapping[str, int], todo: Iterable[str], merges: Iterable[tuple[Sequence[str], float]], total: int
) -> int:
    """Rows already indexed: all rows but those of parts still to do, plus the finished share of parts being
    rewritten right now (system.merges' progress). Clamped to 0..total."""
    todo_set = set(todo)
    pending = sum(part_rows.get(p, 0) for p in todo_set)
    in_flight = 0.0
    for sources, progress in merges:
        for p in sources:
            if p in todo_set:
                in_flight += part_rows.get(p, 0) * min(max(progress, 0.0), 1.0)
    return max(0, min(total, int(total - pending + in_flight)))


# ---- search ------------------------------------------------------------------------------------------------


def vector_literal(values: Sequence[float] | np.ndarray) -> str:
    """An array literal whose decimals are exactly the float32 values (repr of each float32 as a double):
    a row's own vector comes back at distance 0, not at the distance of a rounding error."""
    wide = np.asarray(values, dtype=np.float64)
    if wide.ndim != 1 or wide.size == 0:
        raise UsageError("a query vector must be a non-empty list of numbers")
    if not (np.isfinite(wide).all() and (np.abs(wide) <= np.finfo(np.float32).max).all()):
        raise UsageError("a query vector must hold finite numbers within float32 range")
    exact = wide.astype(np.float32).astype(np.float64)
    # orjson writes each double's shortest round-trip decimal, as repr() does, ~7x faster (serve pays it per request)
    return orjson.dumps(exact, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def parse_vector_json(text: str) -> list[float]:
    """`--vector '[0.1, 0.2, ...]'` → floats, refusing anything that is not a flat list of finite numbers."""
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UsageError(f"--vector is not valid JSON: {exc}") from None
    if not isinstance(doc, list) or not doc:
        raise UsageError("--vector must be a JSON list of numbers, e.g. [0.1, -0.2, ...]")
    out: list[float] = []
    for i, x in enumerate(doc):
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            raise UsageError(f"--vector element {i} is {x!r}: expected a finite number")
        out.append(float(x))
    return out


def search_sql(ref: TableRef, column: str, metric: str, literal: str, limit: int) -> str:
    """The index-friendly shape: nothing but the distance in ORDER BY (a tie-breaker disables the index)."""
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}")
    col = quote_ident(validate_ident(column, "column"))
    return (
        f"SELECT id, url, caption, {metric}({col}, {literal}) AS distance "
        f"FROM {ref.sql} ORDER BY distance ASC LIMIT {int(limit)}"
    )


def search_settings(brute_force: bool, ef_search: int | None) -> dict[str, str | int]:
    """Brute force = skip indexes off; `ef_search` is the HNSW candidate list at query time."""
    settings: dict[str, str | int] = {}
    if brute_force:
        settings["use_skip_indexes"] = 0
    if ef_search is not None:
        settings[EF_SEARCH_SETTING] = int(ef_search)
    return settings


def explain_sql(sql: str) -> str:
    return f"EXPLAIN indexes = 1 {sql}"


def explain_used_index(plan: str) -> str | None:
    """Name of the vector_similarity index an `EXPLAIN indexes = 1` plan reads, if any.

    The plan lists each skip index it uses as `Skip` / `Name: X` / `Description: vector_similarity ...`.
    """
    name: str | None = None
    for raw in plan.splitlines():
        line = raw.strip(" │├└─\t")
        if line.startswith("Name:"):
            name = line[len("Name:") :].strip()
        elif line.startswith("Description:") and "vector_similarity" in line and name:
            return name
    return None


def row_vector_sql(ref: TableRef, column: str, row_id: int) -> str:
    col = quote_ident(validate_ident(column, "column"))
    return f"SELECT {col} AS v FROM {ref.sql} WHERE id = {int(row_id)} LIMIT 1"


def column_dim_sql(ref: TableRef, column: str) -> str:
    col = quote_ident(validate_ident(column, "column"))
    return f"SELECT length({col}) AS d FROM {ref.sql} LIMIT 1"


def current_setting_sql(name: str) -> str:
    return f"SELECT value FROM system.settings WHERE name = {quote_string(name)}"


# ---- recall evaluation -------------------------------------------------------------------------------------


def sample_queries_sql(ref: TableRef, column: str, count: int, seed: int) -> str:
    """`count` rows picked by a seeded hash of their id: the same rows on every run with the same seed. GLOBAL IN:
    on a Distributed table the id list is computed once and sent to the shards (a plain IN of a Distributed
    subquery is refused, distributed_product_mode = 'deny'); on a plain table it is the same as IN."""
    col = quote_ident(validate_ident(column, "column"))
    order = f"cityHash64(id, toUInt64({int(seed)}))"
    return (
        f"SELECT id, {col} AS v FROM {ref.sql} WHERE id GLOBAL IN "
        f"(SELECT id FROM {ref.sql} ORDER BY {order} LIMIT {int(count)}) ORDER BY {order}"
    )


def recall_at_k(approx: Sequence[int], exact: Sequence[int], k: int) -> float:
    """|approx top-k ∩ exact top-k| / |exact top-k| (1.0 when the table holds no rows at all)."""
    truth = set(exact[:k])
    if not truth:
        return 1.0
    return len(truth & set(approx[:k])) / len(truth)


def median_ms(seconds: Sequence[float]) -> float:
    return float(median(seconds)) * 1000.0 if seconds else 0.0


# ---- encoder programs --------------------------------------------------------------------------------------

_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})


def tsv_escape(value: str) -> str:
    """One TabSeparated field: the encoder programs read one escaped value per line, as ClickHouse sends it."""
    return value.translate(_TSV_ESCAPES)
