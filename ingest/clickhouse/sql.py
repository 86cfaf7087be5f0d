"""Pure SQL builders. Every identifier passes `quote_ident`; every value is a number we formatted ourselves."""

from __future__ import annotations

from ingest.core.ids import TableRef, quote_ident, validate_ident

COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "Int64"),
    ("url", "String"),
    ("caption", "String"),
    ("NSFW", "String"),
    ("similarity", "Float32"),
    ("image_embedding", "Array(Float32)"),
    ("text_embedding", "Array(Float32)"),
)
"""The tutorial's table, column for column."""

EMBEDDING_COLUMNS = ("image_embedding", "text_embedding")

def create_database_sql(database: str) -> str:
    return f"CREATE DATABASE IF NOT EXISTS {quote_ident(validate_ident(database, 'database'))}"


def create_table_sql(ref: TableRef, dedup_window: int | None) -> str:
    """The tutorial's DDL; a dedup window lets retried blocks with the same token be no-ops (modern servers)."""
    cols = ", ".join(f"{quote_ident(name)} {typ}" for name, typ in COLUMNS)
    settings = f" SETTINGS non_replicated_deduplication_window = {int(dedup_window)}" if dedup_window else ""
    return f"CREATE TABLE IF NOT EXISTS {ref.sql} ({cols}) ENGINE = MergeTree ORDER BY id{settings}"


def describe_sql(ref: TableRef) -> str:
    """Columns of an existing table in order, on every server version (18.16's system.columns has no position)."""
    return f"DESCRIBE TABLE {ref.sql}"


def count_range_sql(ref: TableRef, first_id: int, last_id: int) -> str:
    return f"SELECT count() AS n FROM {ref.sql} WHERE id BETWEEN {int(first_id)} AND {int(last_id)}"


def count_sql(ref: TableRef) -> str:
    return f"SELECT count() AS n FROM {ref.sql}"


def delete_range_sql(ref: TableRef, first_id: int, last_id: int) -> str:
    """ALTER DELETE works on every server we target (18.16 included); callers wait for the mutation."""
    return f"ALTER TABLE {ref.sql} DELETE WHERE id BETWEEN {int(first_id)} AND {int(last_id)}"


def quote_string(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def schema_mismatch(actual: list[tuple[str, str]]) -> str | None:
    """Describe how an existing table differs from ours, or None when it matches."""
    expected = list(COLUMNS)
    if actual == expected:
        return None
    want = ", ".join(f"{n} {t}" for n, t in expected)
    got = ", ".join(f"{n} {t}" for n, t in actual)
    return f"has columns ({got}); expected ({want})"
