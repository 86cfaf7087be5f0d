"""The one ClickHouse reply parser and the insert settings, pure: texts from 18.16, modern servers and chdb."""

from __future__ import annotations

import pytest

from ingest.clickhouse.replies import json_rows, parse_error
from ingest.clickhouse.settings import Squash, insert_settings, settings_clause
from ingest.core.errors import AuthError, ClickHouseCode, TargetError, TransientTargetError
from ingest.sinks.base import server_info
from ingest.sinks.chdb import map_chdb_error


def test_18_16_modern_and_chdb_texts_parse_alike() -> None:
    old = parse_error("Code: 60, e.displayText() = DB::Exception: Table d.t doesn't exist., e.what() = DB::Exception")
    assert (old.code, old.name) == (60, "UNKNOWN_TABLE")
    assert old.first_line == "Code: 60, DB::Exception: Table d.t doesn't exist."
    modern = parse_error(
        "Code: 252. DB::Exception: Too many parts (300). (TOO_MANY_PARTS) (version 26.9.1)\nStack trace:\n0. x"
    )
    assert (modern.code, modern.name) == (252, "TOO_MANY_PARTS") and "\n" not in modern.first_line
    assert modern.retriable() and not old.retriable()
    assert parse_error("boom", code_header="209").code == ClickHouseCode.SOCKET_TIMEOUT
    assert parse_error("").first_line == "" and parse_error("").code is None
    assert parse_error("", None).retriable(503)  # a 5xx with no code may pass


def test_errors_map_into_the_tree() -> None:
    assert isinstance(parse_error("Code: 516. DB::Exception: x").error("at h"), AuthError)
    err = map_chdb_error(RuntimeError("Code: 62. DB::Exception: Syntax error: failed at position 1 (SYNTAX_ERROR)"))
    assert type(err) is TargetError and err.code == ClickHouseCode.SYNTAX_ERROR
    assert str(err).startswith("chdb: Code: 62. DB::Exception: Syntax error")
    assert isinstance(map_chdb_error(RuntimeError("Code: 202. too many")), TransientTargetError)


def test_json_rows_and_a_reply_that_is_not_json() -> None:
    assert json_rows(b'{"n":1}\n{"n":2}\n', "h") == [{"n": 1}, {"n": 2}]
    with pytest.raises(TargetError, match="h sent a reply that is not JSON"):
        json_rows(b"Code: 1. oops", "h")


def test_setting_names_are_checked_once_for_both_sinks() -> None:
    assert settings_clause({"a_b": 1, "c": "x'y"}) == " SETTINGS a_b = 1, c = 'x\\'y'"
    assert settings_clause(None) == ""
    for bad in ("x=1&readonly", "1a", "a b", ""):
        with pytest.raises(ValueError, match="bad setting name"):
            settings_clause({bad: 1})


def test_insert_settings_send_squashing_everywhere_and_only_known_settings() -> None:
    squash = Squash(rows=49_152)
    old = server_info("18.16.1")
    got = insert_settings(
        token="t", squash=squash, dedup_token=old.dedup_token, async_insert=old.async_insert, skip_indexes=False
    )
    assert got == {
        "min_insert_block_size_rows": 49_152,
        "min_insert_block_size_bytes": 0,  # bytes take no part: a segment is one part whatever it weighs
        "max_insert_block_size": 49_152,
    }
    new = server_info("26.9.2.1")
    got = insert_settings(
        token="t", squash=squash, dedup_token=new.dedup_token, async_insert=new.async_insert, skip_indexes=True
    )
    assert got["async_insert"] == 0 and got["insert_deduplication_token"] == "t"
    assert got["materialize_skip_indexes_on_insert"] == 0 and got["min_insert_block_size_rows"] == 49_152
    assert server_info("21.10.1").async_insert is False and server_info("21.11.1").async_insert is True
