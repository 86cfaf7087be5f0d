"""Retry timing shared by every stage that talks to a network peer (source downloads, target inserts)."""

from __future__ import annotations

import random


def backoff_seconds(attempt: int, cap: float, base: float = 0.25) -> float:
    """Capped exponential backoff with full jitter (attempt starts at 1)."""
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))
