"""One error tree for the whole program.

Library exceptions (aiohttp, chdb, pyarrow, OS) are mapped into it at the edges that call those libraries;
everything above the edges sees only these classes. Whether an error is worth retrying is a property of its
class, and so is the process exit code it maps to.
"""

from __future__ import annotations

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


class UncertainInsertError(TransientTargetError):
    """An insert whose outcome is unknown (connection lost after the body was sent): reconcile before retrying."""


class AuthError(TargetError):
    """Credentials were refused: retrying cannot help."""


class SchemaMismatchError(TargetError):
    """The table exists with columns that differ from ours: we never append into it."""


class UnsupportedFeatureError(TargetError):
    """The server is too old for a feature (vector index, cosineDistance...)."""


class LedgerError(IngestError):
    """The resume ledger cannot be read or written."""


class IndexTooLargeError(UsageError):
    """The projected memory of a vector index exceeds what the target can hold (refused unless --force)."""


def exception_leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions inside a (nested) TaskGroup failure, in order: where our error tree is found again."""
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(exception_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


def first_error(group: BaseExceptionGroup[BaseException], *kinds: type[E]) -> E | None:
    """The first leaf of the first kind that has one (kinds in order of preference)."""
    leaves = exception_leaves(group)
    for kind in kinds:
        for e in leaves:
            if isinstance(e, kind):
                return e
    return None


# ClickHouse server error codes, classified once. Anything not listed is fatal unless its HTTP status is 5xx.
RETRIABLE_CLICKHOUSE_CODES = frozenset({3, 159, 164, 202, 209, 210, 236, 241, 242, 252, 319, 425, 999, 1000})
AUTH_CLICKHOUSE_CODES = frozenset({192, 193, 194, 195, 516})
BAD_DATA_CLICKHOUSE_CODES = frozenset({6, 26, 27, 33, 38, 53, 69, 72, 117, 130, 131, 190})


def classify_clickhouse_error(code: int | None, message: str, http_status: int | None = None) -> TargetError:
    """Map a ClickHouse error code (and HTTP status) to our tree."""
    if code in AUTH_CLICKHOUSE_CODES or (http_status in (401, 403) and code is None):
        return AuthError("authentication failed: the server refused the user or password", code)
    if code in RETRIABLE_CLICKHOUSE_CODES:
        return TransientTargetError(message, code)
    if code is None and http_status is not None and http_status >= 500:
        return TransientTargetError(message, code)
    return TargetError(message, code)
