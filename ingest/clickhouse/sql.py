"""Pure SQL builders. Every identifier passes `quote_ident`; every value is a number we formatted ourselves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ingest.core.ids import TableRef, quote_ident, validate_ident
from ingest.core.schema import DEFAULT_SCHEMA, EMBEDDING_COLUMNS, TableSchema

COLUMNS: tuple[tuple[str, str], ...] = tuple(DEFAULT_SCHEMA.describe())
"""The tutorial's table, column for column (the default `TableSchema`)."""

__all__ = ["COLUMNS", "EMBEDDING_COLUMNS"]


def columns_sql(schema: TableSchema = DEFAULT_SCHEMA) -> str:
    """The column list of a CREATE TABLE, codecs included."""
    out = []
    for col in schema.columns:
        codec = schema.codec(col.name)
        out.append(f"{quote_ident(col.name)} {col.ch_type}" + (f" CODEC({codec})" if codec else ""))
    return ", ".join(out)


def create_database_sql(database: str) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {quote_ident(validate_ident(database, 'database'))}"


def create_table_sql(ref: TableRef, dedup_window: int | None, schema: TableSchema = DEFAULT_SCHEMA) -> str:
    """The tutorial's DDL with small granules (`schema.index_granularity`: by-id reads stay cheap); a dedup window
    lets retried blocks with the same token be no-ops (modern servers)."""
    cols = columns_sql(schema)
    settings = [f"index_granularity = {int(schema.index_granularity)}"]
    if dedup_window:
        settings.append(f"non_replicated_deduplication_window = {int(dedup_window)}")
    engine = f"MergeTree ORDER BY id SETTINGS {', '.join(settings)}"
    return f"CREATE TABLE IF NOT EXISTS {ref.sql} ({cols}) ENGINE = {engine}"


def describe_sql(ref: TableRef) -> str:
    """Columns of an existing table in order, on every server version (18.16's system.columns has no position)."""
    return f"DESCRIBE TABLE {ref.sql}"


def count_range_sql(ref: TableRef, first_id: int, last_id: int) -> str:
    return f"SELECT count() AS n FROM {ref.sql} WHERE id BETWEEN {int(first_id)} AND {int(last_id)}"


def vector_dim_sql(ref: TableRef) -> str:
    """The dimension of the vectors a table already holds (no row: an empty table fits any)."""
    return f"SELECT length(image_embedding) AS d FROM {ref.sql} LIMIT 1"


def count_sql(ref: TableRef) -> str:
    return f"SELECT count() AS n FROM {ref.sql}"


def delete_range_sql(ref: TableRef, first_id: int, last_id: int) -> str:
    """ALTER DELETE works on every server we target (18.16 included); callers wait for the mutation."""
    return f"ALTER TABLE {ref.sql} DELETE WHERE id BETWEEN {int(first_id)} AND {int(last_id)}"


def insert_from_file_sql(ref: TableRef, path: str, settings: str) -> str:
    """An INSERT whose Native body the engine reads from `path` (a pipe we write); `settings` is a SETTINGS clause."""
    return f"INSERT INTO {ref.sql} FROM INFILE {quote_string(path)}{settings} FORMAT Native"


def active_parts_sql(ref: TableRef) -> str:
    return (
        "SELECT count() AS n FROM system.parts "
        f"WHERE database = {quote_string(ref.database)} AND table = {quote_string(ref.table)} AND active"
    )


def delay_parts_sql() -> str:
    """Active parts in a partition past which the server delays inserts (merge_tree_settings; 150 on 18.16)."""
    return "SELECT value FROM system.merge_tree_settings WHERE name = 'parts_to_delay_insert'"


def background_merges_sql(ref: TableRef, run: bool) -> str:
    """Stop or start the table's background merges (its merges only; OPTIMIZE is refused while stopped)."""
    return f"SYSTEM {'START' if run else 'STOP'} MERGES {ref.sql}"


def running_query_sql(query_id: str) -> str:
    """Queries still running on this server under `query_id`, or started by it (a Distributed insert's parts on
    the shards carry it as `initial_query_id`)."""
    q = quote_string(query_id)
    return f"SELECT count() AS n FROM system.processes WHERE query_id = {q} OR initial_query_id = {q}"


def quote_string(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def schema_mismatch(actual: list[tuple[str, str]], schema: TableSchema = DEFAULT_SCHEMA) -> str | None:
    """Describe how an existing table differs from ours, or None when it matches."""
    expected = schema.describe()
    if actual == expected:
        return None
    want = ", ".join(f"{n} {t}" for n, t in expected)
    got = ", ".join(f"{n} {t}" for n, t in actual)
    hint = " (pass the same --extra-columns as when it was created, or another --table)" if schema.extras else ""
    return f"has columns ({got}); expected ({want}){hint}"


def table_problem(rows: Sequence[Mapping[str, Any]], schema: TableSchema = DEFAULT_SCHEMA) -> str | None:
    """How DESCRIBE TABLE's rows differ from `schema` (columns, and the vector codec when one was asked)."""
    problem = schema_mismatch([(str(r["name"]), str(r["type"])) for r in rows], schema)
    if problem or schema.vector_codec is None:
        return problem
    for r in rows:
        want = schema.codec(str(r["name"]))
        if want is None:
            continue
        got = str(r.get("codec_expression", "") or "")
        if got.upper() != want.upper():
            return f"column {r['name']} has codec {got or 'default'!r}; --vector-codec asks for {want}"
    return None
