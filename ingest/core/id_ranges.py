"""A set of id ranges kept merged: the ranges a replicated cluster deleted are read from every delete mutation a
table ever had and asked about once per segment sent, so they stay few and each lookup is a bisection."""

from __future__ import annotations

import bisect


class IdRanges:
    """Closed ranges [first, last] of ids, merged on insertion (overlapping or adjacent ranges become one)."""

    def __init__(self) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []

    def add(self, first: int, last: int) -> None:
        if first > last:
            return
        lo = bisect.bisect_left(self._lasts, first - 1)  # the first range that ends at or after first - 1
        hi = bisect.bisect_right(self._firsts, last + 1)  # past the last range that starts at or before last + 1
        if lo < hi:
            first = min(first, self._firsts[lo])
            last = max(last, self._lasts[hi - 1])
        self._firsts[lo:hi] = [first]
        self._lasts[lo:hi] = [last]

    def __contains__(self, id_: object) -> bool:
        if not isinstance(id_, int):
            return False
        i = bisect.bisect_left(self._lasts, id_)
        return i < len(self._firsts) and self._firsts[i] <= id_

    def __len__(self) -> int:
        return len(self._firsts)

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._firsts, self._lasts, strict=True))
