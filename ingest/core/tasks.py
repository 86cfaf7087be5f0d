"""Stopping an asyncio task for good: a cancel is only a request."""

from __future__ import annotations

import asyncio
from typing import Any


async def stopped(task: asyncio.Task[Any]) -> None:
    """Cancel `task` (a no-op once it is done) and wait until it has ended. An error it ended with is retrieved
    and dropped: the caller has its own account of what went wrong (or reads `task.exception()` itself)."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # retrieved: asyncio would report it as never retrieved
