"""When the tuning grid stops measuring: early, at the first candidate that reaches the target at a reasonable
search list (tune.should_stop), or a few builds after one that reaches it only at a longer list. Pure."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from ingest.vector.tune import Measured, should_stop

MORE_AFTER_REACHING = 2
"""Once a candidate reaches the target only at a large search list (> 256), at most this many more builds look
for one that reaches it at a smaller list: on the issue's noisy data nothing reached 0.95 at ≤ 256 and the whole
grid ran (25.9–41.7 s of tuning) to choose list 512 anyway."""


def stops_after(measured: Sequence[Measured], got: Sequence[Measured], target: float) -> bool:
    """measure_grid's early stop, after `got` (the last build's variants, the end of `measured`): it reaches the
    target at a reasonable list, or MORE_AFTER_REACHING builds followed one that reached it at a longer list."""
    reached = [j for j, m in enumerate(measured) if m.first_list_reaching(target) is not None]
    late = bool(reached) and len({m.candidate.build() for m in measured[reached[0] :]}) > MORE_AFTER_REACHING
    return any(should_stop(m, target) for m in got) or late


def measured_to(measured: Sequence[Measured], target: float) -> list[Measured]:
    """The part of a grid measured for a higher target that measure_grid would have measured for `target` (it
    stops earlier): what a tuner aiming at `target` decides on."""
    out: list[Measured] = []
    for _, group in itertools.groupby(measured, key=lambda m: m.candidate.build()):
        got = list(group)
        out.extend(got)
        if stops_after(out, got, target):
            break
    return out
