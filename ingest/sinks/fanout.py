"""Calls fanned out over a cluster's nodes: run them together, and read a node lost mid-call as transient."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ingest.core.errors import IngestError, TargetError, TransientTargetError, UnreachableTargetError

if TYPE_CHECKING:
    from ingest.sinks.http import HttpSink

REMOTE_NODE_CODES = frozenset({32, 279, 285})
"""A Distributed insert or read losing a shard's node: ATTEMPT_TO_READ_AFTER_EOF (the node died mid-packet),
ALL_CONNECTION_TRIES_FAILED, TOO_FEW_LIVE_REPLICAS. Uncertain (an insert) or transient (a read), not fatal."""

T = TypeVar("T")


async def all_of(calls: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run coroutines concurrently; the first error of our tree leaves as itself, not as an ExceptionGroup."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(c) for c in calls]
    except ExceptionGroup as group:
        first = next((e for e in group.exceptions if isinstance(e, IngestError)), None)
        if first is not None:
            raise first from None
        raise
    return [t.result() for t in tasks]


async def remote_read(call: Awaitable[T]) -> T:
    """A read through the entry (the Distributed table): a shard's node lost mid-read is transient, not fatal; the
    next attempt reads from a live replica of that shard."""
    try:
        return await call
    except TargetError as exc:
        if exc.retriable or exc.code not in REMOTE_NODE_CODES:
            raise
        raise TransientTargetError(str(exc), exc.code) from None


async def gone_or_down(node: HttpSink, query_id: str) -> None:
    """`node.wait_query_gone`, where a member that refuses connections runs nothing: a dead node must not stall the
    others (a single target is never assumed so: behind a proxy a refusal says nothing, see HttpSink)."""
    with contextlib.suppress(UnreachableTargetError):
        await node.wait_query_gone(query_id)
