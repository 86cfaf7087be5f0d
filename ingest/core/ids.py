"""Names the program passes around: a checked, quoted table reference. Flags are user input, so every identifier
is validated once here and backquoted wherever SQL is built."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ingest.core.errors import UsageError

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def validate_ident(name: str, what: str) -> str:
    """Refuse anything but a plain identifier: names come from flags, and flags are user input."""
    if not _IDENT.match(name):
        raise UsageError(f"invalid {what} name {name!r}: use letters, digits and _ (not starting with a digit)")
    return name


def quote_ident(name: str) -> str:
    """Backquote an identifier (after validation the escapes are belt and braces)."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


@dataclass(frozen=True, slots=True)
class TableRef:
    database: str
    table: str

    def __post_init__(self) -> None:
        validate_ident(self.database, "database")
        validate_ident(self.table, "table")

    @property
    def sql(self) -> str:
        return f"{quote_ident(self.database)}.{quote_ident(self.table)}"

    @property
    def key(self) -> str:
        return f"{self.database}.{self.table}"
