"""ClickHouse replies, parsed once for every sink: error texts (code, exception name, first line) and JSON rows.

18.16 writes `Code: 60, e.displayText() = DB::Exception: ..., e.what() = DB::Exception`; modern servers write
`Code: 60. DB::Exception: .... (UNKNOWN_TABLE) (version 26.9...)` followed by a stack trace; chdb raises the
same text inside a Python exception. One parser turns all of them into an `ErrorReply`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from ingest.core.errors import ClickHouseCode, TargetError, classify_clickhouse_error

DEDUP_WINDOW = 100_000
"""`non_replicated_deduplication_window` of our tables: how many recent insert tokens a table remembers."""
MESSAGE_LIMIT = 300

_CODE = re.compile(r"Code:\s*(\d+)")
_NAME = re.compile(r"\(([A-Z][A-Z0-9_]+)\)")


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """What a failed ClickHouse request said."""

    code: int | None
    name: str | None
    """The exception's name (UNKNOWN_TABLE...), from the text or from our table of codes."""
    first_line: str

    def error(self, prefix: str, http_status: int | None = None) -> TargetError:
        """The error of our tree this reply maps to; the message is `prefix: first line`."""
        return classify_clickhouse_error(self.code, f"{prefix}: {self.first_line}", http_status)

    def retriable(self, http_status: int | None = None) -> bool:
        return self.error("", http_status).retriable


def one_line(text: str) -> str:
    """The first line of a server message without 18.16's `e.what()` tail or a stack trace, bounded."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = re.sub(r",\s*e\.what\(\)\s*=\s*\S+\s*$", "", line)
    line = re.sub(r"\s*Stack trace.*$", "", line)
    line = line.replace("e.displayText() = ", "")
    return line if len(line) <= MESSAGE_LIMIT else line[: MESSAGE_LIMIT - 1] + "…"


def parse_error(text: str, code_header: str | None = None) -> ErrorReply:
    """Parse a ClickHouse error text; `code_header` (X-ClickHouse-Exception-Code) wins over the text's code."""
    code: int | None = int(code_header) if code_header and code_header.strip().isdigit() else None
    if code is None:
        m = _CODE.search(text)
        code = int(m.group(1)) if m else None
    m = _NAME.search(text.strip().splitlines()[0] if text.strip() else "")
    name = m.group(1) if m else None
    if name is None and code is not None and code in ClickHouseCode._value2member_map_:
        name = ClickHouseCode(code).name
    return ErrorReply(code=code, name=name, first_line=one_line(text))


def json_rows(raw: bytes, where: str) -> list[dict[str, Any]]:
    """Rows of a `FORMAT JSONEachRow` reply."""
    try:
        return [orjson.loads(line) for line in raw.splitlines() if line.strip()]
    except orjson.JSONDecodeError as exc:
        raise TargetError(f"ClickHouse at {where} sent a reply that is not JSON: {exc}") from None
