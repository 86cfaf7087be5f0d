"""One error tree for the whole program.

Library exceptions (aiohttp, chdb, pyarrow, OS) are mapped into it at the edges that call those libraries;
everything above the edges sees only these classes. Whether an error is worth retrying is a property of its
class, and so is the process exit code it maps to.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar, TypeVar

E = TypeVar("E", bound=BaseException)

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_BAD_SHARDS = 3
EXIT_TRANSIENT = 4
EXIT_INTERRUPTED = 0  # an ordered shutdown on SIGINT/SIGTERM is a success: the ledger makes it resumable


class IngestError(Exception):
    """Base of every error the program reports to its user as one line."""

    retriable: ClassVar[bool] = False
    exit_code: ClassVar[int] = EXIT_FATAL


class UsageError(IngestError):
    """Bad flags or arguments: nothing was started."""

    exit_code = EXIT_USAGE


class NotImplementedYet(UsageError):
    """A subcommand that a later release fills in."""


class ConfigError(IngestError):
    """Settings that parse but cannot work (bad target URL, unreadable password file...)."""

    exit_code = EXIT_USAGE


class BadShardError(IngestError):
    """A shard's input files are broken: the shard is quarantined, other shards continue."""

    exit_code = EXIT_BAD_SHARDS

    def __init__(self, shard: int, reason: str) -> None:
        super().__init__(f"shard {shard}: {reason}")
        self.shard = shard
        self.reason = reason


class SourceError(IngestError):
    """The source could not deliver a file (HTTP status, size mismatch...)."""


class TransientSourceError(SourceError):
    """The source failed in a way that may pass: connection reset, 5xx, timeout."""

    retriable = True
    exit_code = EXIT_TRANSIENT


class MissingSourceFile(SourceError):
    """A shard file does not exist at the source (404 / no such file)."""


class TargetError(IngestError):
    """The target database refused or failed a request."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TransientTargetError(TargetError):
    """The target may accept the same request later: connection errors, 5xx, overload codes."""

    retriable = True
    exit_code = EXIT_TRANSIENT


class UnreachableTargetError(TransientTargetError):
    """No connection could be made (refused, no route): nothing was sent, and nothing of ours runs there now."""


class UncertainInsertError(TransientTargetError):
    """An insert whose outcome is unknown (connection lost after the body was sent): reconcile before retrying."""


class AuthError(TargetError):
    """Credentials were refused: retrying cannot help."""


class SchemaMismatchError(TargetError):
    """The table exists with columns that differ from ours: we never append into it."""


class UnsupportedFeatureError(TargetError):
    """The server is too old for a feature (vector index, cosineDistance...)."""


class BadRequestError(UsageError):
    """A search-service client sent a request we cannot answer: it gets a 4xx with this one line."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class LedgerError(IngestError):
    """The resume ledger cannot be read or written."""


class IndexTooLargeError(UsageError):
    """The projected memory of a vector index exceeds what the target can hold (refused unless --force)."""


def exception_leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside a (nested) TaskGroup failure, in order, or `[exc]` for a plain exception."""
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    out: list[BaseException] = []
    for e in exc.exceptions:
        out.extend(exception_leaves(e))
    return out


def first_error(exc: BaseException, *kinds: type[E]) -> E | None:
    """The first leaf of the first kind that has one (kinds in order of preference): where our error tree is found
    again inside an ExceptionGroup. The one unwrapper: every TaskGroup edge uses it."""
    leaves = exception_leaves(exc)
    for kind in kinds:
        for e in leaves:
            if isinstance(e, kind):
                return e
    return None


class ClickHouseCode(IntEnum):
    """The ClickHouse server error codes this program names (src/Common/ErrorCodes.cpp)."""

    UNEXPECTED_END_OF_FILE = 3
    CANNOT_PARSE_TEXT = 6
    CANNOT_PARSE_QUOTED_STRING = 26
    CANNOT_PARSE_INPUT_ASSERTION_FAILED = 27
    ATTEMPT_TO_READ_AFTER_EOF = 32
    CANNOT_READ_ALL_DATA = 33
    CANNOT_PARSE_DATE = 38
    TYPE_MISMATCH = 53
    UNKNOWN_TABLE = 60
    SYNTAX_ERROR = 62
    ARGUMENT_OUT_OF_BOUND = 69
    CANNOT_PARSE_NUMBER = 72
    UNKNOWN_SETTING = 115
    INCORRECT_DATA = 117
    CANNOT_READ_ARRAY_FROM_TEXT = 130
    TOO_LARGE_STRING_SIZE = 131
    TIMEOUT_EXCEEDED = 159
    READONLY = 164
    SIZES_OF_ARRAYS_DONT_MATCH = 190
    UNKNOWN_USER = 192
    WRONG_PASSWORD = 193
    REQUIRED_PASSWORD = 194
    IP_ADDRESS_NOT_ALLOWED = 195
    TOO_MANY_SIMULTANEOUS_QUERIES = 202
    QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING = 216
    SOCKET_TIMEOUT = 209
    NETWORK_ERROR = 210
    ABORTED = 236
    MEMORY_LIMIT_EXCEEDED = 241
    TABLE_IS_READ_ONLY = 242
    TOO_MANY_PARTS = 252
    UNKNOWN_STATUS_OF_INSERT = 319
    SYSTEM_ERROR = 425
    AUTHENTICATION_FAILED = 516
    KEEPER_EXCEPTION = 999
    POCO_EXCEPTION = 1000


_C = ClickHouseCode

# ClickHouse server error codes, classified once. Anything not listed is fatal unless its HTTP status is 5xx.
# READONLY (164) is the user's profile (readonly=1|2), which no retry changes: fatal. A replica that lost its
# coordinator answers TABLE_IS_READ_ONLY (242): that one passes.
RETRIABLE_CLICKHOUSE_CODES = frozenset(
    {
        _C.UNEXPECTED_END_OF_FILE,
        _C.TIMEOUT_EXCEEDED,
        _C.TOO_MANY_SIMULTANEOUS_QUERIES,
        _C.QUERY_WITH_SAME_ID_IS_ALREADY_RUNNING,  # an insert of the same segment still runs: count again, later
        _C.SOCKET_TIMEOUT,
        _C.NETWORK_ERROR,
        _C.ABORTED,
        _C.MEMORY_LIMIT_EXCEEDED,
        _C.TABLE_IS_READ_ONLY,
        _C.TOO_MANY_PARTS,
        _C.UNKNOWN_STATUS_OF_INSERT,
        _C.SYSTEM_ERROR,
        _C.KEEPER_EXCEPTION,
        _C.POCO_EXCEPTION,
    }
)
AUTH_CLICKHOUSE_CODES = frozenset(
    {_C.UNKNOWN_USER, _C.WRONG_PASSWORD, _C.REQUIRED_PASSWORD, _C.IP_ADDRESS_NOT_ALLOWED, _C.AUTHENTICATION_FAILED}
)
BAD_DATA_CLICKHOUSE_CODES = frozenset(
    {
        _C.CANNOT_PARSE_TEXT,
        _C.CANNOT_PARSE_QUOTED_STRING,
        _C.CANNOT_PARSE_INPUT_ASSERTION_FAILED,
        _C.CANNOT_READ_ALL_DATA,
        _C.CANNOT_PARSE_DATE,
        _C.TYPE_MISMATCH,
        _C.ARGUMENT_OUT_OF_BOUND,
        _C.CANNOT_PARSE_NUMBER,
        _C.INCORRECT_DATA,
        _C.CANNOT_READ_ARRAY_FROM_TEXT,
        _C.TOO_LARGE_STRING_SIZE,
        _C.SIZES_OF_ARRAYS_DONT_MATCH,
    }
)
CUT_BODY_CLICKHOUSE_CODES = frozenset(
    {_C.UNEXPECTED_END_OF_FILE, _C.ATTEMPT_TO_READ_AFTER_EOF, _C.CANNOT_READ_ALL_DATA}
)
"""What a server says when an insert body ends mid-block. Our encoder writes whole blocks only and every cut of
the stream lands mid-block (HttpSink._body), so to one of our inserts these mean the body was cut on the way (a
half-closed socket, a proxy giving up): the insert failed, is reconciled and sent again, not a bad shard."""


def classify_clickhouse_error(code: int | None, message: str, http_status: int | None = None) -> TargetError:
    """Map a ClickHouse error code (and HTTP status) to our tree."""
    if code in AUTH_CLICKHOUSE_CODES or (http_status in (401, 403) and code is None):
        return AuthError("authentication failed: the server refused the user or password", code)
    if code in RETRIABLE_CLICKHOUSE_CODES:
        return TransientTargetError(message, code)
    if code is None and http_status is not None and http_status >= 500:
        return TransientTargetError(message, code)
    if code is None and http_status == 400:
        # the HTTP layer refused a request that arrived mangled (a connection half-closed mid-head); ClickHouse's
        # own 400s (syntax, unknown setting) carry their code
        return TransientTargetError(message, code)
    return TargetError(message, code)
