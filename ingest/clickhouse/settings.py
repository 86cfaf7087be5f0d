"""Query settings, pure: names checked once, the SETTINGS clause, and what an insert sends.

An insert sends only settings its server knows: 18.16 refuses a whole request over one unknown name.
Squashing: the server concatenates the blocks of one INSERT until `min_insert_block_size_rows` or
`min_insert_block_size_bytes` is reached, then writes a part. Sending the segment's rows, and 0 bytes ("does not
take part"), makes one segment exactly one squashed block whatever it weighs, hence one part, atomic: a body cut
before its end commits nothing. (Its weight is bounded by the plan, from the shard's measured text bytes.)
18.16 and chdb 26.9 both know `min_insert_block_size_rows`, `min_insert_block_size_bytes` and
`max_insert_block_size` (checked in `system.settings`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ingest.clickhouse.sql import quote_string

_SETTING = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

ASYNC_INSERT_SINCE = (21, 11)
"""`async_insert` exists from 21.11 and is on by default from 26.2; we always insert synchronously."""


def check_setting_name(name: str) -> str:
    if not _SETTING.match(name):
        raise ValueError(f"bad setting name {name!r}")
    return name


def settings_clause(settings: dict[str, str | int] | None) -> str:
    """` SETTINGS a = 1, b = 'x'` (empty for no settings)."""
    if not settings:
        return ""
    parts = []
    for key, value in settings.items():
        check_setting_name(key)
        parts.append(f"{key} = {value}" if isinstance(value, int) else f"{key} = {quote_string(value)}")
    return " SETTINGS " + ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Squash:
    """Squash an INSERT's streamed blocks into one block of `rows` rows, with no byte threshold."""

    rows: int


def insert_settings(
    *,
    token: str | None,
    squash: Squash | None,
    dedup_token: bool,
    async_insert: bool,
    skip_indexes: bool,
) -> dict[str, str | int]:
    """Settings of one insert, for a server with the given features (flags from its version)."""
    settings: dict[str, str | int] = {}
    if squash is not None:
        rows = max(1, squash.rows)
        settings["min_insert_block_size_rows"] = rows
        settings["min_insert_block_size_bytes"] = 0
        settings["max_insert_block_size"] = rows
    if async_insert:
        settings["async_insert"] = 0
    if token and dedup_token:
        settings["insert_deduplication_token"] = token
    if skip_indexes:
        settings["materialize_skip_indexes_on_insert"] = 0
    return settings
