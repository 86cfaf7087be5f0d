"""How build time and index memory grow from a table measured here to a larger one: pure arithmetic, no I/O.

Per-row build cost grows with the rows of the graph a row is inserted into (∝ G^b); memory is per row. A
projection scales an index built on this table (MeasuredBuild) to a larger table laid out as `index` would lay it
out, with the structure the tuner would choose there (Ahead, vector/tune_ahead.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from ingest.vector.sizing import formula_bytes, human_bytes, resident_bytes

# ---- growth: a larger table projected from a build measured on this one ---------------------------------------

GRAPH_EXPONENT = 0.32
"""Per-row build cost ∝ G^b in graphs of G rows. Measured here (26.9 in chdb, bf16 M=12 ef_c=24, 512-d, one graph
of G rows on 2 cores, CPU per row at G = 15,625 … 250,000, bench/graph_cost.py, 3 rounds): b = 0.33 clustered,
0.27 noisy, 0.34 offset end to end (0.17–0.40 per doubling); the growth ladder's full builds of one structure read
0.32 from graphs of 62,720 to 125,184 rows and 0.24 to 250,112. HNSW's ~ln G hops (Malkov & Yashunin) undercount
it: each hop in a larger graph misses more cache. Real sentence embeddings grow less: all-MiniLM-L6-v2 vectors
(384-d) of 250,000 distinct lines of Debian's documentation read b = 0.07 (M=12 ef_c=24) and 0.12 (M=16 ef_c=32)
where the clustered synthetic rows read 0.29 and 0.42 in the same run (2 rounds), so the default projects builds on
the long side.

Not measured per table: b is a small exponent read from a small ratio (1.2× over a 2× span of graph sizes) where
one build on this shared machine swings 1.3–1.5× between rounds, and the tuner's sample builds read it low in all
five look aheads of the ladder (0.00–0.16 against the full builds' 0.24–0.32), the same rows recut into smaller
graphs costing as much per row as in larger ones (vector/tune_ahead.py). Only a wide span and rounds pin it, which
is bench/graph_cost.py's job, not every `index`'s."""
GRAPH_EXPONENT_SOURCE = (
    "the default, measured here on synthetic graphs of 15,625–250,000 rows (bench/graph_cost.py; real MiniLM "
    "sentence embeddings grew less, b 0.07–0.12: builds projected on the long side)"
)


BUILD_GROWTH = (
    "build CPU s × W(N)/W(n), W = Σ over graphs of G^(1+b) (per-row cost ∝ G^b, b = "
    f"{GRAPH_EXPONENT:g} measured here by bench/graph_cost.py); "
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


MIN_AHEAD_SPAN = 1.5
"""A larger table whose graphs the sample can hold at less than this × this table's own is not looked ahead: its
structure would be measured on graphs much like the ones measured here (the look ahead from 1M to 2M rows spans
2×)."""


ENDS = {"eager": "higher", "wary": "lower"}
"""The two other choices a larger table's tuner may make (Ahead and Projection fields): on a sample reading
DECISION_NOISE higher, or lower, than the look ahead's."""

DECISION_NOISE = 0.02
"""How far recall@10 of one structure at one search list moves between two tuning samples of a table. bf16 M=12
ef_c=32 in graphs of 125,184 rows, 200 query rows, 200,000-row samples of the 1M and 2M synthetic tables (seeds 0–2,
and seed 0 again in the growth ladder): 0.916–0.937 at search list 256 on the 2M table's own samples, 0.921–0.95+
on the 1M table's look aheads; 0.940–0.960 at 512. Against a target of 0.95 the 2M table's tuner chose, in four
runs, M=12 ef_c=32 at list 512 twice, M=16 ef_c=32 at 512 and M=12 ef_c=64 at 256 (1.65× the build): a projection
of its choice is a range over the choice on this sample and those of samples reading this much higher or lower."""


def merged_graph_rows(rows: int, rows_per_granule: int, max_graphs: int) -> tuple[int, int]:
    """(rows of a graph, graphs) of `rows` merged into one part and cut into at most `max_graphs` graphs, as
    `index` lays out a table of more parts than --max-graphs (vector/graphs.py)."""
    per = max(1, rows_per_granule)
    granules = max(1, math.ceil(rows / per))
    per_graph = max(1, math.ceil(granules / max(1, max_graphs)))
    return min(rows, per_graph * per), math.ceil(granules / per_graph)


Grid = tuple[tuple[str, tuple[tuple[int, float], ...]], ...]
"""Each candidate's label and its recall@10 at each search list measured."""


@dataclass(frozen=True, slots=True)
class Ahead:
    """What the tuner measured for a table of `rows` rows (`index --project-rows`), on this table's own rows laid
    out in that table's graphs (as many of them as the sample holds): the structure it would choose there, and
    that structure's build CPU over the built one's on the same sample. A larger table's graphs are larger and
    recall less at the same structure, so the tuner there chooses a heavier one (1M synthetic rows chose M=12
    ef_c=24, 2M and 4M M=16 ef_c=32, 1.43× the build CPU): a projection of the structure built here misses that."""

    rows: int
    quantization: str
    m: int
    ef_construction: int
    cost: float
    """Build CPU of the structure chosen there over the structure built here, both on the sample in that
    table's graphs (1.0: the same structure)."""
    sample_graph_rows: int
    same: bool
    """The structure chosen there is the one built here."""
    grid: Grid = ()
    """Each candidate measured there and its recall@10 at each search list: what the choice stood on, for
    comparing it with the larger table's own tuner (their samples disagreed by ~0.03 at 2M, bench/growth.py)."""
    eager: Ahead | None = None
    """What the tuner there chooses instead if its own sample reads recall DECISION_NOISE higher than this one
    did (None: the same choice): the larger table's tuner decides on a sample of its own."""
    wary: Ahead | None = None
    """The same if its sample reads DECISION_NOISE lower."""

    @property
    def label(self) -> str:
        return f"{self.quantization} M={self.m} ef_c={self.ef_construction}"

    def as_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "quantization": self.quantization,
            "m": self.m,
            "ef_construction": self.ef_construction,
            "cost": self.cost,
            "sample_graph_rows": self.sample_graph_rows,
            "same": self.same,
            "grid": {label: {str(size): r for size, r in recall} for label, recall in self.grid},
            "eager": None if self.eager is None else self.eager.as_dict(),
            "wary": None if self.wary is None else self.wary.as_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ahead:
        """An entry of an `index --report` (older ones have no grid and no eager or wary choice)."""
        grid = tuple((label, tuple((int(k), float(v)) for k, v in r.items())) for label, r in d.get("grid", {}).items())
        eager, wary = (Ahead.from_dict(d[end]) if d.get(end) else None for end in ENDS)
        plain = {f.name: d[f.name] for f in fields(cls) if f.name not in ("grid", *ENDS)}
        return cls(**plain, grid=grid, eager=eager, wary=wary)


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
    ahead: tuple[Ahead, ...] = ()
    """The tuner's choice at each --project-rows, where it measured one."""

    def ahead_at(self, rows: int) -> Ahead | None:
        return next((a for a in self.ahead if a.rows == rows), None)

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
    ahead: Ahead | None = None
    """The structure the tuner would choose at `rows` when it differs from the one built (None: the same)."""
    eager: Projection | None = None
    """The projection with the choice a sample reading DECISION_NOISE higher makes there (project_end), where it
    differs: the projected build is the range over this one, `eager` and `wary`."""
    wary: Projection | None = None
    """The same with the choice a sample reading DECISION_NOISE lower makes there."""

    def span(self, value: Callable[[Projection], float | None]) -> tuple[float, float]:
        """(least, most) of `value` over this projection and its ends."""
        got = [v for p in (self, self.eager, self.wary) if p is not None and (v := value(p)) is not None]
        return (min(got), max(got)) if got else (0.0, 0.0)

    def line(self) -> str:
        f = self.measured_from
        cpu = (
            ""
            if self.build_cpu_seconds is None or f.cores_used is None
            else f" ({self.build_cpu_seconds:.0f} CPU s on the {f.cores_used:.2f} cores the measured build used)"
        )
        a = self.ahead
        chosen = (
            ""
            if a is None
            else f" of {a.label}, what the tuner chooses there on this table's rows in graphs of "
            f"{a.sample_graph_rows:,} (× {a.cost:.2f} the build CPU of the structure built here)"
        )
        return (
            f"projected at {self.rows:,} rows ({self.graphs} graphs of {self.graph_rows:,}{chosen}): build "
            f"{self.build_seconds:.0f} s{cpu}, index memory {human_bytes(self.index_bytes)} (from "
            f"{f.build_seconds:.1f} s and {human_bytes(f.index_bytes)} measured over {f.rows:,} rows in graphs of "
            f"{f.graph_rows:,}; per-row build cost ∝ G^{GRAPH_EXPONENT:.2f}, {GRAPH_EXPONENT_SOURCE}; the documented "
            f"formula says {human_bytes(self.formula_bytes)})" + self._ends_line()
        )

    def _ends_line(self) -> str:
        said = []
        for name, how in ENDS.items():
            end: Projection | None = getattr(self, name)
            if end is None:
                continue
            label = end.ahead.label if end.ahead is not None else "the structure built here"
            cpu = "" if end.build_cpu_seconds is None else f" ({end.build_cpu_seconds:.0f} CPU s)"
            said.append(
                f"build {end.build_seconds:.0f} s{cpu}, index memory {human_bytes(end.index_bytes)} if that table's "
                f"own sample reads recall@10 {DECISION_NOISE:g} {how} than this one did (its tuner then chooses "
                f"{label})"
            )
        return "".join(f"; {x}" for x in said)

    def as_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "graph_rows": self.graph_rows,
            "graphs": self.graphs,
            "build_seconds": self.build_seconds,
            "index_bytes": self.index_bytes,
            "formula_bytes": self.formula_bytes,
            "build_cpu_seconds": self.build_cpu_seconds,
            "cores_used": self.measured_from.cores_used,
            "graph_exponent": GRAPH_EXPONENT,
            "structure": None if self.ahead is None else self.ahead.as_dict(),
            "eager": None if self.eager is None else self.eager.as_dict(),
            "wary": None if self.wary is None else self.wary.as_dict(),
        }


def project_build(
    measured: MeasuredBuild, rows: int, rows_per_granule: int, max_graphs: int, structure: bool = True
) -> Projection:
    """Build seconds and index memory at `rows`, laid out as `index` would lay them out, from a measured build:
    CPU by build_work (b = GRAPH_EXPONENT), × the structure the tuner chose for `rows` over the one built (Ahead;
    `structure=False`: the built structure's own growth), wall = that CPU ÷ the cores the measured build used
    (the wall scaled alike when its CPU is unknown), memory = the measured bytes per row × rows (× that
    structure's sized bytes over the built one's). `index --project-rows` and bench/growth_report.py both call
    this."""
    graph_rows, graphs = merged_graph_rows(rows, rows_per_granule, max_graphs)
    looked = measured.ahead_at(rows)
    ahead = looked if structure and looked is not None and not looked.same else None
    q, m = (ahead.quantization, ahead.m) if ahead is not None else (measured.quantization, measured.m)
    formula = formula_bytes(rows, measured.dim, q, m)
    per_row = measured.index_bytes / measured.rows if measured.index_bytes else formula / max(rows, 1)
    if ahead is not None and measured.index_bytes:
        per_row *= resident_bytes(rows, measured.dim, q, m) / resident_bytes(
            rows, measured.dim, measured.quantization, measured.m
        )
    work = build_work(rows, graph_rows) / max(build_work(measured.rows, measured.graph_rows), 1e-9)
    work *= ahead.cost if ahead is not None else 1.0
    cores = measured.cores_used
    if measured.build_cpu_seconds is not None and cores is not None:
        cpu_then: float | None = measured.build_cpu_seconds * work
        seconds = measured.build_cpu_seconds * work / cores
    else:
        cpu_then, seconds = None, measured.build_seconds * work
    return Projection(rows, graph_rows, graphs, seconds, int(per_row * rows), formula, measured, cpu_then, ahead)


def project_end(
    measured: MeasuredBuild, rows: int, rows_per_granule: int, max_graphs: int, end: str
) -> Projection | None:
    """project_build with the structure the tuner at `rows` chooses if its sample reads DECISION_NOISE higher
    (`end` "eager") or lower ("wary") than the look ahead's did (ENDS): an end of the projected range; None where
    that choice is the same."""
    looked = measured.ahead_at(rows)
    other: Ahead | None = None if looked is None else getattr(looked, end)
    if other is None:
        return None
    return project_build(replace(measured, ahead=(other,)), rows, rows_per_granule, max_graphs)


def project_range(measured: MeasuredBuild, rows: int, rows_per_granule: int, max_graphs: int) -> Projection:
    """project_build at `rows` with both ends of its range (`index --project-rows`, bench/growth_report.py)."""
    p = project_build(measured, rows, rows_per_granule, max_graphs)
    eager, wary = (project_end(measured, rows, rows_per_granule, max_graphs, end) for end in ENDS)
    return replace(p, eager=eager, wary=wary)
