"""Pure SQL for tuning, sizing, building once and recording a vector index: no I/O here.

Facts relied on (chdb 26.9; ClickHouse >= 25.8 documents the same):
- `INSERT ... SELECT` of a few tens of thousands of rows lands as one part, so a scratch table built by one
  INSERT holds one part, as a merged table does; with the table's rows per granule (`index_granularity`) an
  index of the same GRANULARITY builds graphs of the same rows in both.
- `system.parts.secondary_indices_uncompressed_bytes` is 0 for a part that carries no skip index: it tells
  which parts an index does not cover yet.
- `materialize_skip_indexes_on_merge` (MergeTree, 25.1+) = 0 makes merges drop the vector index instead of
  rebuilding it; `MATERIALIZE INDEX` then builds it once for the merged part.
"""

from __future__ import annotations

from collections.abc import Sequence

from ingest.clickhouse.sql import quote_string
from ingest.core.ids import TableRef, quote_ident, validate_ident

META_TABLE = "_laion_ingest_index_meta"
SKIP_ON_MERGE = "materialize_skip_indexes_on_merge"
SKIP_ON_INSERT = "materialize_skip_indexes_on_insert"
CACHE_SETTING = "vector_similarity_index_cache_size"
RESCORING_SETTING = "vector_search_with_rescoring"
FETCH_MULTIPLIER_SETTING = "vector_search_index_fetch_multiplier"
"""Candidates fetched from the index per row asked, rescored on the full vectors (25.8+, 1–1000)."""
HASH_BUCKETS = 1_000_000


def _where(ref: TableRef, col: str = "table") -> str:
    return f"database = {quote_string(ref.database)} AND {col} = {quote_string(ref.table)}"


def scratch_ref(ref: TableRef) -> TableRef:
    return TableRef(ref.database, validate_ident(f"_laion_tune_{ref.table}"[:200], "table"))


def create_scratch_sql(scratch: TableRef, rows_per_granule: int | None = None) -> str:
    """Given `rows_per_granule`: granules of the table's own row count, so that GRANULARITY g makes graphs of
    the same rows in both (the scratch rows are lighter: by bytes alone its granules would hold about twice the
    rows)."""
    settings = f" SETTINGS index_granularity = {max(1, int(rows_per_granule))}" if rows_per_granule else ""
    return f"CREATE TABLE {scratch.sql} (id Int64, v Array(Float32)) ENGINE = MergeTree ORDER BY id{settings}"


def drop_table_sql(ref: TableRef) -> str:
    """SYNC: the tuner's scratch table goes at once, and its graphs with it from the vector index cache (an Atomic
    database drops 8 minutes later otherwise, mid-build of the real index: the cache then loses cells while
    `index` reads what its own graphs added, and counted 5.9 GB for a 500k-row index of 1.0 GB on disk)."""
    return f"DROP TABLE IF EXISTS {ref.sql} SYNC"


def _hash(seed: int) -> str:
    return f"cityHash64(id, toUInt64({int(seed)}))"


def _sampled(ref: TableRef, column: str, rows_total: int, wanted: int, seed: int) -> str:
    """Rows picked by a seeded hash; a PREWHERE-able bucket filter keeps huge tables from being read whole."""
    col = quote_ident(validate_ident(column, "column"))
    share = min(HASH_BUCKETS, max(1, int(HASH_BUCKETS * 1.3 * wanted / max(rows_total, 1)) + 1))
    where = f"WHERE {_hash(seed)} % {HASH_BUCKETS} < {share}" if share < HASH_BUCKETS else ""
    return f"SELECT id, {col} AS v FROM {ref.sql} {where} ORDER BY {_hash(seed)}"


def fill_scratch_sql(
    scratch: TableRef, ref: TableRef, column: str, rows_total: int, sample: int, queries: int, seed: int
) -> str:
    """One INSERT (one part) of the `sample` rows that follow the `queries` query rows in hash order."""
    inner = _sampled(ref, column, rows_total, sample + queries, seed)
    return f"INSERT INTO {scratch.sql} SELECT id, v FROM ({inner} LIMIT {int(sample)} OFFSET {int(queries)})"


def tune_queries_sql(ref: TableRef, column: str, rows_total: int, sample: int, queries: int, seed: int) -> str:
    """The query rows: the first `queries` rows in hash order, so never in the scratch table."""
    return f"{_sampled(ref, column, rows_total, sample + queries, seed)} LIMIT {int(queries)}"


def parts_summary_sql(ref: TableRef) -> str:
    return (
        "SELECT count() AS parts, sum(rows) AS total_rows, sum(bytes_on_disk) AS total_bytes, "
        "countIf(secondary_indices_uncompressed_bytes = 0) AS uncovered_parts, "
        "sumIf(rows, secondary_indices_uncompressed_bytes = 0) AS uncovered_rows, "
        "sum(secondary_indices_uncompressed_bytes) AS index_bytes "
        f"FROM system.parts WHERE {_where(ref)} AND active"
    )


def part_stats_sql(ref: TableRef) -> str:
    """Partition, rows, granules and bytes of each active part (a part's last mark is the final one, no rows)."""
    return (
        "SELECT partition_id AS partition, rows, greatest(toInt64(marks) - 1, 1) AS granules, "
        f"bytes_on_disk AS bytes FROM system.parts WHERE {_where(ref)} AND active ORDER BY name"
    )


def optimize_final_sql(ref: TableRef) -> str:
    return f"OPTIMIZE TABLE {ref.sql} FINAL"


def merge_tree_setting_sql(name: str) -> str:
    return f"SELECT value FROM system.merge_tree_settings WHERE name = {quote_string(name)}"


def server_setting_sql(name: str) -> str:
    return f"SELECT value FROM system.server_settings WHERE name = {quote_string(name)}"


def query_setting_exists_sql(name: str) -> str:
    return f"SELECT count() AS n FROM system.settings WHERE name = {quote_string(name)}"


def os_memory_sql() -> str:
    return "SELECT value FROM system.asynchronous_metrics WHERE metric = 'OSMemoryTotal'"


def modify_setting_sql(ref: TableRef, name: str, value: int) -> str:
    return f"ALTER TABLE {ref.sql} MODIFY SETTING {validate_ident(name, 'setting')} = {int(value)}"


def table_setting_sql(ref: TableRef) -> str:
    return f"SELECT create_table_query AS q FROM system.tables WHERE {_where(ref, 'name')}"


def index_cache_sql() -> str:
    """Bytes and entries (one per graph loaded) of the vector index cache: the memory loaded indexes take."""
    return (
        "SELECT sumIf(value, metric = 'VectorSimilarityIndexCacheBytes') AS bytes, "
        "sumIf(value, metric = 'VectorSimilarityIndexCacheCells') AS cells FROM system.metrics"
    )


def engine_cpu_sql() -> str:
    """CPU seconds (µs) the engine's threads used since it started, as its own counters say."""
    return (
        "SELECT sum(value) AS us FROM system.events WHERE event IN ('UserTimeMicroseconds', 'SystemTimeMicroseconds')"
    )


def index_bytes_sql(ref: TableRef, name: str) -> str:
    return (
        "SELECT data_uncompressed_bytes AS b, data_compressed_bytes AS c FROM system.data_skipping_indices "
        f"WHERE {_where(ref)} AND name = {quote_string(name)}"
    )


# ---- the record of a tuned index ----------------------------------------------------------------------------


def meta_ref(ref: TableRef) -> TableRef:
    return TableRef(ref.database, META_TABLE)


def create_meta_sql(ref: TableRef) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {meta_ref(ref).sql} (table_name String, index_name String, type_full String, "
        "search_settings String, recall_target Float64, recall Float64, recorded DateTime64(3)) "
        "ENGINE = ReplacingMergeTree(recorded) ORDER BY (table_name, index_name)"
    )


def insert_meta_sql(
    ref: TableRef, index: str, type_full: str, settings_json: str, recall_target: float, recall: float
) -> str:
    values = ", ".join(
        [
            quote_string(ref.table),
            quote_string(index),
            quote_string(type_full),
            quote_string(settings_json),
            repr(float(recall_target)),
            repr(float(recall)),
            "now64(3)",
        ]
    )
    return f"INSERT INTO {meta_ref(ref).sql} VALUES ({values})"


def select_meta_sql(ref: TableRef, index: str) -> str:
    return (
        f"SELECT type_full, search_settings, recall_target, recall FROM {meta_ref(ref).sql} "
        f"WHERE table_name = {quote_string(ref.table)} AND index_name = {quote_string(index)} "
        "ORDER BY recorded DESC LIMIT 1"
    )


GRID_TABLE = "_laion_ingest_tune_grid"
GRID_COLUMNS = (
    "quantization String, m UInt32, ef_construction UInt32, fetch_multiplier UInt32, build_seconds Float64, "
    "sample_rows UInt64, graph_rows UInt64, recall Float64, search_list UInt32, latency_ms Float64, "
    "table_rows UInt64, dim UInt32"
)
GRID_NAMES = ", ".join(["table_name", "column_name", *(c.split()[0] for c in GRID_COLUMNS.split(", ")), "recorded"])
"""Named in each insert and select: a table recorded by an older version may hold more columns (graph_exponent
Nullable(Float64), b as `index --project-rows` once measured it, in the DDL or added after `recorded`), which an
insert leaves NULL and a select does not read."""


def grid_ref(ref: TableRef) -> TableRef:
    return TableRef(ref.database, GRID_TABLE)


def create_grid_sql(ref: TableRef) -> str:
    """What the tuner measured per candidate, kept for `plan` (the constants measured on the user's own rows)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {grid_ref(ref).sql} (table_name String, column_name String, {GRID_COLUMNS}, "
        "recorded DateTime64(3)) ENGINE = MergeTree ORDER BY (table_name, column_name, recorded)"
    )


def _grid_value(v: str | int | float | None) -> str:
    if v is None:
        return "NULL"
    return repr(float(v)) if isinstance(v, float) else str(int(v))


def insert_grid_sql(ref: TableRef, column: str, rows: Sequence[Sequence[str | int | float | None]]) -> str:
    """One row per candidate, values in GRID_COLUMNS' order (the first, the quantization, a string; None is NULL)."""
    values = ", ".join(
        "("
        + ", ".join(
            [quote_string(ref.table), quote_string(column), quote_string(str(r[0]))]
            + [_grid_value(v) for v in r[1:]]
            + ["now64(3)"]
        )
        + ")"
        for r in rows
    )
    return f"INSERT INTO {grid_ref(ref).sql} ({GRID_NAMES}) VALUES {values}"


def select_grid_sql(ref: TableRef, column: str) -> str:
    """The latest tuning's rows for this table and column, by the columns this version records."""
    where = f"table_name = {quote_string(ref.table)} AND column_name = {quote_string(column)}"
    return (
        f"SELECT {GRID_NAMES} FROM {grid_ref(ref).sql} WHERE {where} AND recorded = "
        f"(SELECT max(recorded) FROM {grid_ref(ref).sql} WHERE {where})"
    )


def table_exists_in_sql(ref: TableRef) -> str:
    return f"SELECT count() AS n FROM system.tables WHERE {_where(ref, 'name')}"


def row_bytes_sql(ref: TableRef) -> str:
    """Rows and bytes on disk of the table's active parts, with its embedding columns' share."""
    return f"SELECT sum(rows) AS rows, sum(bytes_on_disk) AS bytes FROM system.parts WHERE {_where(ref)} AND active"


def meta_exists_sql(ref: TableRef) -> str:
    return f"SELECT count() AS n FROM system.tables WHERE {_where(meta_ref(ref), 'name')}"


def ids_search_sql(ref: TableRef, column: str, metric: str, literal: str, limit: int) -> str:
    """Only the ids of the nearest rows, in the index-friendly shape (nothing after the distance in ORDER BY)."""
    col = quote_ident(validate_ident(column, "column"))
    if metric not in ("cosineDistance", "L2Distance"):
        raise ValueError(f"unknown metric {metric!r}")
    return f"SELECT id, {metric}({col}, {literal}) AS distance FROM {ref.sql} ORDER BY distance ASC LIMIT {int(limit)}"


def exact_top_ids_sql(ref: TableRef, column: str, metric: str, literals: list[str], k: int) -> str:
    """Exact top-k ids for many query vectors in one scan of the column (brute force per query would read the
    column once per query): one distance column per query, unrolled with ARRAY JOIN, the k nearest kept per
    query by `groupArraySorted` over (distance, id) tuples. Rows come back as (qi, top) with qi from 1."""
    col = quote_ident(validate_ident(column, "column"))
    if metric == "cosineDistance":
        # ordered as cosineDistance orders them (1 - v·q / |v||q|, |q| fixed per query) with the row's norm
        # computed once instead of once per query: 0.23 against 0.30 s per scan of 20 queries over 100k rows
        dists = ", ".join(f"-dotProduct({col}, {lit}) / n" for lit in literals)
        inner = f"SELECT id, L2Norm({col}) AS n, [{dists}] AS ds FROM {ref.sql}"
    elif metric == "L2Distance":
        inner = f"SELECT id, [{', '.join(f'{metric}({col}, {lit})' for lit in literals)}] AS ds FROM {ref.sql}"
    else:
        raise ValueError(f"unknown metric {metric!r}")
    return (
        f"SELECT qi, groupArraySorted({int(k)})((d, id)) AS top FROM ({inner}) "
        "ARRAY JOIN ds AS d, arrayEnumerate(ds) AS qi GROUP BY qi ORDER BY qi"
    )
