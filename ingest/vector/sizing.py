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

import math
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


# ---- growth: a larger table projected from a build measured on this one ---------------------------------------

GRAPH_EXPONENT = 0.32
"""Per-row build cost ∝ G^b in graphs of G rows, where no build on the table measured b (tune_run.graph_exponent).
Measured here (26.9 in chdb, bf16 M=12 ef_c=24, 512-d, one graph of G rows on 2 cores, CPU per row at G = 15,625
… 250,000, bench/graph_cost.py, 3 rounds): b = 0.33 clustered, 0.27 noisy, 0.34 offset end to end (0.17–0.40 per
doubling). HNSW's ~ln G hops (Malkov & Yashunin) undercount it: each hop in a larger graph misses more
cache, and within a cluster the rows are as hard as random ones. ln G predicted 1.29× from 15,625 to 250,000
where 2.10–2.54× was measured; on the growth ladder the 1M → 4M projection by ln G read 0.60 of the CPU measured,
by G^b (b measured on the 1M table's sample) 1.02. Real sentence embeddings grow less: all-MiniLM-L6-v2 vectors
(384-d) of 250,000 distinct lines of Debian's documentation read b = 0.07 (M=12 ef_c=24) and 0.12 (M=16 ef_c=32)
where the clustered synthetic rows read 0.29 and 0.42 in the same run (2 rounds), so the default projects builds on
the long side; b also grows with M and ef_construction, which is why the tuner measures it on the chosen one."""
GRAPH_EXPONENT_SOURCE = (
    "the default, measured here on synthetic graphs of 15,625–250,000 rows (bench/graph_cost.py; real MiniLM "
    "sentence embeddings grew less, b 0.07–0.12: builds projected on the long side)"
)


def graph_exponent_of(measured: float | None) -> tuple[float, str]:
    """b and where it came from: measured on the table's sample (the tuner, --project-rows), else the default."""
    if measured is None:
        return GRAPH_EXPONENT, GRAPH_EXPONENT_SOURCE
    return measured, "measured on this table's sample"


BUILD_GROWTH = (
    "build CPU s × W(N)/W(n), W = Σ over graphs of G^(1+b) (per-row cost ∝ G^b, b measured by the tuner on the "
    f"table's sample in graphs of two sizes, else {GRAPH_EXPONENT:g}); "
    "wall = that CPU ÷ the cores the measured build used (its CPU s ÷ its wall s)"
)
MEMORY_GROWTH = (
    "resident bytes of the loaded index at n rows × N/n (vectors and links are per row; the cache's own count "
    "rounds up to usearch's arenas and is not)"
)


def graph_cost(graph_rows_then: int, graph_rows: int, exponent: float | None = None) -> float:
    """Per-row build cost in graphs of `graph_rows_then` over that in graphs of `graph_rows`: (G'/G)^b."""
    b = GRAPH_EXPONENT if exponent is None else exponent
    return float((max(graph_rows_then, 1) / max(graph_rows, 1)) ** b)


def build_work(rows: int, graph_rows: int, exponent: float | None = None) -> float:
    """Σ over the graphs of G^(1+b): `rows` cut into graphs of `graph_rows` (the last one holds the rest); a
    row's insert costs ∝ G^b in its graph of G rows, so CPU grows with this."""
    b = GRAPH_EXPONENT if exponent is None else exponent
    g = max(1, min(graph_rows, rows))
    full, rest = divmod(max(rows, 0), g)
    return float(full * g ** (1 + b) + rest ** (1 + b))


def scale_build_seconds(
    seconds: float, rows: int, graph_rows: int, rows_then: int, graph_rows_then: int, exponent: float | None = None
) -> float:
    """Build seconds over `rows_then` rows in graphs of `graph_rows_then`, from `seconds` measured over `rows` in
    graphs of `graph_rows`, by build_work (the same cores at both sizes)."""
    work_then = build_work(rows_then, graph_rows_then, exponent)
    return seconds * work_then / max(build_work(rows, graph_rows, exponent), 1e-9)


MIN_FIT_SECONDS = 3.0
"""A build shorter than this times its overheads, not its graphs (a mutation takes ~1 s however small: a 20,000-row
sample built in 1.0 s in graphs of 1,265 rows and in 1.0 s in graphs a quarter that size)."""


def fit_graph_exponent(seconds: float, graph_rows: int, small_seconds: float, small_graph_rows: int) -> float | None:
    """b of per-row cost ∝ G^b from the same rows built in graphs of two sizes (None when they are too close, or
    a build too short to say); kept within [0, 1]: below, a build cheaper per row in larger graphs, above, costlier
    than quadratic, are timing noise, not HNSW."""
    if min(seconds, small_seconds) < MIN_FIT_SECONDS or graph_rows < 2 * small_graph_rows:
        return None
    b = math.log(seconds / small_seconds) / math.log(graph_rows / small_graph_rows)
    return min(1.0, max(0.0, b))


def merged_graph_rows(rows: int, rows_per_granule: int, max_graphs: int) -> tuple[int, int]:
    """(rows of a graph, graphs) of `rows` merged into one part and cut into at most `max_graphs` graphs, as
    `index` lays out a table of more parts than --max-graphs (vector/graphs.py)."""
    per = max(1, rows_per_granule)
    granules = max(1, math.ceil(rows / per))
    per_graph = max(1, math.ceil(granules / max(1, max_graphs)))
    return min(rows, per_graph * per), math.ceil(granules / per_graph)


@dataclass(frozen=True, slots=True)
class MeasuredBuild:
    """One index built on this table: what the projection scales from."""

    rows: int
    dim: int
    quantization: str
    m: int
    graph_rows: int
    build_seconds: float
    index_bytes: int | None
    """The index as ClickHouse reports it: its uncompressed bytes, what a loaded graph holds resident."""
    build_cpu_seconds: float | None = None
    """CPU of the build where it is known (chdb: the engine runs in our process; a server's is not ours to read)."""
    graph_exponent: float | None = None
    """b of per-row build cost ∝ G^b, measured on this table's sample (None: GRAPH_EXPONENT)."""

    @property
    def cores_used(self) -> float | None:
        """CPU seconds per wall second of the build: the cores it had (fewer on a loaded machine)."""
        if not self.build_cpu_seconds or self.build_seconds <= 0:
            return None
        return self.build_cpu_seconds / self.build_seconds


@dataclass(frozen=True, slots=True)
class Projection:
    rows: int
    graph_rows: int
    graphs: int
    build_seconds: float
    index_bytes: int
    formula_bytes: int
    """The documented formula, before any margin."""
    measured_from: MeasuredBuild
    build_cpu_seconds: float | None = None

    def line(self) -> str:
        f = self.measured_from
        cpu = (
            ""
            if self.build_cpu_seconds is None or f.cores_used is None
            else f" ({self.build_cpu_seconds:.0f} CPU s on the {f.cores_used:.2f} cores the measured build used)"
        )
        return (
            f"projected at {self.rows:,} rows ({self.graphs} graphs of {self.graph_rows:,}): build "
            f"{self.build_seconds:.0f} s{cpu}, index memory {human_bytes(self.index_bytes)} (from "
            f"{f.build_seconds:.1f} s and {human_bytes(f.index_bytes)} measured over {f.rows:,} rows in graphs of "
            f"{f.graph_rows:,}; per-row build cost ∝ G^{self.exponent:.2f}, {self.exponent_source}; the documented "
            f"formula says {human_bytes(self.formula_bytes)})"
        )

    @property
    def exponent(self) -> float:
        return graph_exponent_of(self.measured_from.graph_exponent)[0]

    @property
    def exponent_source(self) -> str:
        return graph_exponent_of(self.measured_from.graph_exponent)[1]

    def as_dict(self) -> dict[str, float | int | bool | None]:
        return {
            "rows": self.rows,
            "graph_rows": self.graph_rows,
            "graphs": self.graphs,
            "build_seconds": self.build_seconds,
            "index_bytes": self.index_bytes,
            "formula_bytes": self.formula_bytes,
            "build_cpu_seconds": self.build_cpu_seconds,
            "cores_used": self.measured_from.cores_used,
            "graph_exponent": self.exponent,
            "graph_exponent_measured": self.measured_from.graph_exponent is not None,
        }


def project_build(measured: MeasuredBuild, rows: int, rows_per_granule: int, max_graphs: int) -> Projection:
    """Build seconds and index memory at `rows`, laid out as `index` would lay them out, from a measured build:
    CPU by build_work at the measured b, wall = that CPU ÷ the cores the measured build used (the wall scaled
    alike when its CPU is unknown), memory = the measured bytes per row × rows. `index --project-rows` and
    bench/growth_report.py both call this."""
    graph_rows, graphs = merged_graph_rows(rows, rows_per_granule, max_graphs)
    formula = formula_bytes(rows, measured.dim, measured.quantization, measured.m)
    per_row = measured.index_bytes / measured.rows if measured.index_bytes else formula / max(rows, 1)
    b = measured.graph_exponent
    work = build_work(rows, graph_rows, b) / max(build_work(measured.rows, measured.graph_rows, b), 1e-9)
    cores = measured.cores_used
    if measured.build_cpu_seconds is not None and cores is not None:
        cpu_then: float | None = measured.build_cpu_seconds * work
        seconds = measured.build_cpu_seconds * work / cores
    else:
        cpu_then, seconds = None, measured.build_seconds * work
    return Projection(rows, graph_rows, graphs, seconds, int(per_row * rows), formula, measured, cpu_then)
