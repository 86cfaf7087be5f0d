"""IdRanges against a plain set of ids, on random ranges (overlapping, adjacent, nested, disjoint)."""

from __future__ import annotations

import random

from ingest.core.id_ranges import IdRanges


def test_merged_ranges_answer_like_the_set_of_their_ids() -> None:
    rng = random.Random(5)
    for _ in range(200):
        ranges = IdRanges()
        ids: set[int] = set()
        for _ in range(rng.randint(0, 12)):
            first = rng.randint(-20, 60)
            last = first + rng.randint(-2, 15)
            ranges.add(first, last)
            ids.update(range(first, last + 1))
        assert [x for x in range(-30, 90) if x in ranges] == sorted(ids)
        merged = ranges.ranges()
        assert all(a <= b for a, b in merged)
        # kept merged: each range starts past the end of the one before plus one (no overlap, no adjacency)
        assert all(merged[i][1] + 1 < merged[i + 1][0] for i in range(len(merged) - 1))
        assert len(ranges) == len(merged)


def test_a_range_covering_many_becomes_one() -> None:
    ranges = IdRanges()
    for first in range(0, 100, 10):
        ranges.add(first, first + 4)
    assert len(ranges) == 10
    ranges.add(3, 92)
    assert ranges.ranges() == [(0, 94)]
    assert 50 in ranges and 95 not in ranges and -1 not in ranges
