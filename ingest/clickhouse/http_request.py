"""One HTTP request to ClickHouse, planned without sending it: URL, parameters, headers, and what a failed reply
means. Pure, like clickhouse-connect's request planning, so every transport (the sink, a cluster's nodes) shares it.

Credentials travel in `X-ClickHouse-User` / `X-ClickHouse-Key` headers, never in a URL; `HttpRequest` keeps its
headers out of repr so they never reach a log line or an error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

from ingest.clickhouse.replies import parse_error
from ingest.clickhouse.settings import check_setting_name
from ingest.clickhouse.sql import quote_string
from ingest.clickhouse.wire import FORMAT_NAMES
from ingest.core.config import Credentials
from ingest.core.errors import AuthError, TargetError
from ingest.core.ids import TableRef


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """Everything needed to send one POST; `headers` holds the credentials, so it is kept out of repr."""

    url: str
    headers: dict[str, str] = field(repr=False)
    body: bytes | None = None
    """The SQL for queries; None for inserts, whose body is the streamed data."""


def auth_headers(credentials: Credentials) -> dict[str, str]:
    headers = {"X-ClickHouse-User": credentials.user}
    if credentials.password:
        headers["X-ClickHouse-Key"] = credentials.password
    return headers


def _params(database: str, settings: dict[str, str | int] | None) -> list[tuple[str, str]]:
    params = [("database", database), ("wait_end_of_query", "1")]
    for key, value in (settings or {}).items():
        params.append((check_setting_name(key), str(value)))
    return params


def build_request(
    base_url: str,
    credentials: Credentials,
    database: str,
    sql: str,
    settings: dict[str, str | int] | None = None,
    *,
    insert: bool = False,
    query_id: str | None = None,
) -> HttpRequest:
    """A query (SQL in the body) or an insert (statement in `?query=`, data streamed as the body).

    `wait_end_of_query=1` makes the server buffer its answer, so an error can never hide at the end of a 200.
    """
    params = _params(database, settings)
    if query_id is not None:
        params.append(("query_id", query_id))
    if insert:
        params.insert(0, ("query", sql))
    url = f"{base_url.rstrip('/')}/?{urlencode(params, quote_via=quote)}"
    headers = auth_headers(credentials)
    if insert:
        headers["Content-Type"] = "application/octet-stream"
        return HttpRequest(url, headers)
    headers["Content-Type"] = "text/plain; charset=utf-8"
    return HttpRequest(url, headers, sql.encode())


def insert_sql(ref: TableRef, fmt: str) -> str:
    return f"INSERT INTO {ref.sql} FORMAT {FORMAT_NAMES['rowbinary' if fmt == 'rowbinary' else 'native']}"


def pending_mutations_sql(ref: TableRef) -> str:
    return (
        "SELECT count() AS n FROM system.mutations WHERE database = "
        f"{quote_string(ref.database)} AND table = {quote_string(ref.table)} AND is_done = 0"
    )


def server_error(status: int, code_header: str | None, body: str, user: str, where: str) -> TargetError:
    """Map a failed response (status, exception code, text) into the error tree; no credential text."""
    reply = parse_error(body, code_header)
    if not reply.first_line:
        reply = dataclasses.replace(reply, first_line=f"HTTP {status}")
    err = reply.error(f"ClickHouse at {where}", status)
    if isinstance(err, AuthError):  # a 403 with a code is a privilege the user lacks (ACCESS_DENIED), said as is
        return AuthError(f"authentication failed for user {user!r} at {where}", reply.code)
    return err
