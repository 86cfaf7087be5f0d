"""How much memory an HNSW index will take, decided before it is built: pure arithmetic, no I/O.

ClickHouse documents an estimate for `vector_similarity` indexes (docs, "Estimating memory consumption"): the
vectors as the index stores them plus the graph's level-0 links,

    formula = rows × dim × bytes_per_value(quantization) + rows × M × 8

(usearch keeps 2·M neighbours per node on level 0, 4-byte slots). An index needs two figures, both sized here:

- **resident** (RAM): a loaded graph takes its uncompressed bytes, the formula + 21 bytes a row whatever the
  structure (bf16 M=12 1,141 a row, formula 1,120; i8 M=12 629, 608; b1 M=8 149, 128: bench/graph_cost.py), and the
  process's RSS grew by about that (bf16 0.85–1.16×, b1 1.01–1.23×) when one graph was loaded. ClickHouse's memory
  tracker does not see it (MemoryTracking grew 16–33 bytes a row): nothing but the machine's RAM bounds it. Sized
  as (formula + rows × RESIDENT_ROW_OVERHEAD) × RESIDENT_MARGIN, which covers the most RSS measured (bf16 M=12
  1,382 sized, 1,319 measured; b1 M=8 192 sized, 183 measured).
- **counted** (the vector index cache's limit): 26.9 counts usearch's arenas, reserved as they double
  (`VectorSimilarityIndexCacheBytes`), 1.1–2.1× the resident bytes by where a graph's size falls: bf16 M=12 1.51×
  the formula (one graph of 40,000 rows) to 1.86× (16 graphs of 63,950) and 2.10× (14 graphs of 7,680); i8
  1.39–1.47×; b1 2.23–3.34×. An index counted above `vector_similarity_index_cache_size` is evicted and read from
  disk again on every query, and the server caps that setting at `cache_size_to_ram_max_ratio` × its RAM (0.5 by
  default). Sized as formula × SAFETY_FACTOR + rows × ROW_OVERHEAD, which covers every one of those measurements
  (the tightest: bf16 M=12 in 7,680-row graphs, 2,357 bytes a row measured, 2,496 sized).

A projection from an index measured on this table (project_build) scales its resident bytes per row instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ingest.clickhouse.index_sql import CACHE_SETTING

BYTES_PER_VALUE: dict[str, float] = {"f64": 8.0, "f32": 4.0, "f16": 2.0, "bf16": 2.0, "i8": 1.0, "b1": 0.125}
SAFETY_FACTOR = 2.0
ROW_OVERHEAD = 256
"""Bytes a row the cache counts beyond the formula × SAFETY_FACTOR (measured b1: 427 a row whatever M)."""
RESIDENT_ROW_OVERHEAD = 32
"""Bytes a row a loaded index holds beyond the formula (measured 21 for bf16, i8 and b1 alike)."""
RESIDENT_MARGIN = 1.2
"""RSS grew by up to 1.16× (bf16) and 1.23× (b1) the index's uncompressed bytes when one graph was loaded
(bench/graph_cost.py); × 1.2 over formula + 32 bytes a row covers both."""
CACHE_RAM_RATIO = 0.5
"""ClickHouse's `cache_size_to_ram_max_ratio` default: no cache is allowed more than this share of the RAM."""
FORMULA = (
    f"resident (formula + rows × {RESIDENT_ROW_OVERHEAD}) × {RESIDENT_MARGIN:g}, counted by the vector index cache "
    f"formula × {SAFETY_FACTOR:g} + rows × {ROW_OVERHEAD}; formula = rows × dim × bytes(quantization) + rows × M × 8 "
    "(ClickHouse's documented estimate)"
)


def formula_bytes(rows: int, dim: int, quantization: str, m: int) -> int:
    """ClickHouse's documented estimate: vectors as stored plus level-0 links (≈ the index's bytes on disk)."""
    return int(rows * dim * BYTES_PER_VALUE[quantization] + rows * m * 8)


def resident_bytes(rows: int, dim: int, quantization: str, m: int) -> int:
    """RAM one loaded index over `rows` vectors takes, sized before it is built (margin included)."""
    return int((formula_bytes(rows, dim, quantization, m) + rows * RESIDENT_ROW_OVERHEAD) * RESIDENT_MARGIN)


def counted_bytes(rows: int, dim: int, quantization: str, m: int) -> int:
    """What the vector index cache counts for one loaded index (its limit must hold it), sized before it is built."""
    return int(formula_bytes(rows, dim, quantization, m) * SAFETY_FACTOR + rows * ROW_OVERHEAD)


@dataclass(frozen=True, slots=True)
class Need:
    """What one or more indexes need: RAM for their resident bytes, and a cache limit above what it counts."""

    resident: int
    counted: int

    def __add__(self, other: Need) -> Need:
        return Need(self.resident + other.resident, self.counted + other.counted)


def need(rows: int, dim: int, quantization: str, m: int) -> Need:
    return Need(resident_bytes(rows, dim, quantization, m), counted_bytes(rows, dim, quantization, m))


def total_need(needs: Iterable[Need]) -> Need:
    return sum(needs, Need(0, 0))


@dataclass(frozen=True, slots=True)
class Fit:
    projected: int
    limit: int | None
    limit_source: str

    @property
    def fits(self) -> bool:
        return self.limit is None or self.projected <= self.limit

    def line(self) -> str:
        return f"{human_bytes(self.projected)} over {self.limit_source} {human_bytes(self.limit)}"


@dataclass(frozen=True, slots=True)
class MemoryBudget:
    """What the target can hold: its memory (or --max-memory) and its vector index cache, when known."""

    memory_bytes: int | None
    memory_source: str
    cache_bytes: int | None = None

    def check(self, need: Need) -> Fit:
        """Resident bytes against the memory, counted bytes against the cache: the one that fails (or is the
        tightest), so a refusal names what to raise."""
        checks = []
        if self.memory_bytes is not None:
            checks.append(Fit(need.resident, self.memory_bytes, self.memory_source))
        if self.cache_bytes is not None:
            checks.append(Fit(need.counted, self.cache_bytes, CACHE_SETTING))
        if not checks:
            return Fit(need.resident, None, "unknown")
        return max(checks, key=lambda f: f.projected / max(f.limit or 1, 1))

    def fits(self, need: Need) -> bool:
        return self.check(need).fits

    def share(self, columns: int) -> MemoryBudget:
        """Each of `columns` indexes built together gets an equal share of both limits."""
        n = max(columns, 1)
        return MemoryBudget(
            None if self.memory_bytes is None else self.memory_bytes // n,
            self.memory_source,
            None if self.cache_bytes is None else self.cache_bytes // n,
        )

    def describe(self) -> str:
        parts = [f"{self.memory_source} {human_bytes(self.memory_bytes)}"] if self.memory_bytes is not None else []
        if self.cache_bytes is not None:
            parts.append(f"{CACHE_SETTING} {human_bytes(self.cache_bytes)}")
        return " and ".join(parts) or "no known limit"


UNBOUNDED = MemoryBudget(None, "unknown")


def cheaper_that_fit(
    rows: int, dim: int, columns: int, budget: MemoryBudget, grid: Iterable[tuple[str, int]]
) -> list[tuple[str, int, int]]:
    """(quantization, M, resident bytes for all columns) of configurations within `budget`, smallest first."""
    out = [(q, m, total_need([need(rows, dim, q, m)] * columns)) for q, m in grid]
    return sorted([(q, m, n.resident) for q, m, n in out if budget.fits(n)], key=lambda c: c[2])


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
