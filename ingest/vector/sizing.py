"""How much memory an HNSW index will take, decided before it is built: pure arithmetic, no I/O.

The formula is ClickHouse's own documented estimate for `vector_similarity` indexes (docs, "Estimating
memory consumption"): the vectors as the index stores them plus the graph's level-0 links,

    bytes = rows × dim × bytes_per_value(quantization) + rows × M × 8

(usearch keeps 2·M neighbours per node on level 0, 4-byte slots: M × 8 bytes per row; upper levels add ~1/M of
that). Issue #78056 measured up to 2× this before a fix in 25.x, so we multiply by a safety factor (1.5 by
default) and compare that with the memory of the target and the size of its vector index cache (an index larger
than the cache is reloaded from disk on every query).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

BYTES_PER_VALUE: dict[str, float] = {"f64": 8.0, "f32": 4.0, "f16": 2.0, "bf16": 2.0, "i8": 1.0, "b1": 0.125}
SAFETY_FACTOR = 1.5
FORMULA = "rows × dim × bytes(quantization) + rows × M × 8, × 1.5 safety (ClickHouse docs; #78056 saw 2×)"


def index_bytes(rows: int, dim: int, quantization: str, m: int, safety: float = SAFETY_FACTOR) -> int:
    """Projected memory of one index over `rows` vectors of `dim` values (safety factor included)."""
    per_value = BYTES_PER_VALUE[quantization]
    return int((rows * dim * per_value + rows * m * 8) * safety)


@dataclass(frozen=True, slots=True)
class MemoryBudget:
    """What the target can hold: its memory (or --max-memory) and its vector index cache, when known."""

    memory_bytes: int | None
    memory_source: str
    cache_bytes: int | None = None

    def limit(self) -> tuple[int | None, str]:
        """The tighter of memory and cache, and what it is."""
        options = [(self.memory_bytes, self.memory_source)]
        if self.cache_bytes is not None:
            options.append((self.cache_bytes, "vector_similarity_index_cache_size"))
        known = [(b, s) for b, s in options if b is not None]
        if not known:
            return None, "unknown"
        return min(known, key=lambda x: x[0])


@dataclass(frozen=True, slots=True)
class Fit:
    projected: int
    limit: int | None
    limit_source: str

    @property
    def fits(self) -> bool:
        return self.limit is None or self.projected <= self.limit


def check_fit(projected: int, budget: MemoryBudget) -> Fit:
    limit, source = budget.limit()
    return Fit(projected, limit, source)


def cheaper_that_fit(
    rows: int, dim: int, columns: int, limit: int, grid: Iterable[tuple[str, int]]
) -> list[tuple[str, int, int]]:
    """(quantization, M, projected bytes for all columns) of configurations that fit under `limit`, smallest first."""
    out = [(q, m, index_bytes(rows, dim, q, m) * columns) for q, m in grid]
    return sorted([c for c in out if c[2] <= limit], key=lambda c: c[2])


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def parse_bytes(text: str) -> int:
    """`--max-memory 8G` / `512M` / `2GiB` / a plain number of bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    if t and t[-1] in scale:
        return int(float(t[:-1]) * scale[t[-1]])
    return int(float(t))


def sizing_grid(quantizations: Sequence[str], ms: Sequence[int]) -> list[tuple[str, int]]:
    return [(q, m) for q in quantizations for m in ms]
