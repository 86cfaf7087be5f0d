"""Which HNSW index to build: a small grid measured on a sample, and the cheapest build that reaches the recall
target. Everything here is pure (the measuring is in vector/tune_run.py), so the choice is unit-tested.

Projected full build time (stated in the output): a row's insert costs ∝ G^b in a graph of G rows (measured,
vector/growth.GRAPH_EXPONENT: HNSW's ~log G hops undercount it), and graphs of a fixed size (vector/graphs.py)
cost the same per row however many there are, so with graphs of G rows in the table and of g in the sample:

    seconds(N) ≈ seconds(n_sample) × (N / n_sample) × (G / g)^b.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from ingest.clickhouse.index_sql import FETCH_MULTIPLIER_SETTING, RESCORING_SETTING
from ingest.vector.graphs import Layout
from ingest.vector.growth import Ahead, graph_cost
from ingest.vector.sizing import resident_bytes

BUILD_MODEL = (
    "sample build s × (N/n) × (G/g)^b, G and g the rows of a graph in the table and in the sample, b the growth of "
    "a row's insert cost with its graph (measured on samples in this table's graphs and in a larger table's where "
    "--project-rows asks)"
)
DEFAULT_SEARCH_LISTS = (32, 64, 128, 256, 512)
REASONABLE_LIST = 256
"""Stop the grid early once a candidate reaches the target at a search list no larger than this."""
RESCORE_MULTIPLIERS: dict[str, tuple[int, ...]] = {"i8": (0, 4), "b1": (4, 16, 64)}
"""Fetch multipliers tried per quantization (0 = no rescoring). Measured by bench/shapes.py (10k rows, M=16
ef_c=64, four synthetic shapes): i8 alone plateaus at recall@10 0.73–0.88, the same at search lists 64 and 256
(the quantization, not the graph, loses the neighbours), and reads 0.99–1.00 rescored over 4×k candidates; b1
reads 0.14–0.29 alone (0.66–0.70 on real MiniLM sentence embeddings), the same rescored over k (rescoring only
re-ranks what the index returns), 0.79–0.94 over 16×k (MiniLM 0.98) and 0.99–1.00 over 64×k."""
PLATEAU = 0.005
"""A search list that doubles and gains less recall than this has reached what the structure can give."""


def query_extras(quantization: str, fetch_multiplier: int = 0) -> dict[str, int]:
    """Search settings a candidate needs: rescoring on the full vectors over `fetch_multiplier` × k candidates
    from the index (b1 always: without it recall collapses, ClickHouse #103745)."""
    if fetch_multiplier <= 0 and quantization != RESCORED_ONLY:
        return {}
    extras = {RESCORING_SETTING: 1}
    if fetch_multiplier > 1:
        extras[FETCH_MULTIPLIER_SETTING] = int(fetch_multiplier)
    return extras


@dataclass(frozen=True, slots=True, order=True)
class Candidate:
    quantization: str
    m: int
    ef_construction: int
    fetch_multiplier: int = 0
    """Search-time rescoring over fetch_multiplier × k index candidates (0: none, the index's own distances)."""

    def label(self) -> str:
        rescore = f" rescore×{self.fetch_multiplier}" if self.fetch_multiplier else ""
        return f"{self.quantization} M={self.m} ef_c={self.ef_construction}{rescore}"

    def build(self) -> Candidate:
        """The index this candidate searches (search settings aside)."""
        return Candidate(self.quantization, self.m, self.ef_construction)

    def extras(self) -> dict[str, int]:
        return query_extras(self.quantization, self.fetch_multiplier)


LOSSY = ("i8", "b1")
RESCORED_ONLY = "b1"
"""Searched only with rescoring (ClickHouse #103745: without it recall collapses), so left out where rescoring is."""


def searchable(quantization: str, rescoring: bool) -> bool:
    """Whether a quantization has a place in a grid measured with (or without) rescoring."""
    return rescoring or quantization != RESCORED_ONLY


QUANT_RANK = {"bf16": 0, "f16": 1, "i8": 2, "b1": 3, "f32": 4, "f64": 5}


def default_grid(
    quantizations: Sequence[str] = ("bf16", "i8"),
    ms: Sequence[int] = (12, 16, 32),
    efs: Sequence[int] = (24, 32, 64, 128),
    rescoring: bool = True,
) -> list[Candidate]:
    """Builds in the order of their expected build cost (M × ef_construction), so the grid can stop at the
    first that reaches the target. At equal cost bf16 comes first: measured here, i8 builds no faster and
    recalls less (it only saves memory, which the sizing step weighs), and b1 needs rescoring. An
    ef_construction under 2·M is left out: each node would choose its M links from barely more candidates than
    it keeps. Each build carries its search variants (`variants`): i8 plain and rescored, b1 rescored."""
    grid = [
        Candidate(q, m, ef) for q in quantizations for m in ms for ef in efs if ef >= 2 * m and searchable(q, rescoring)
    ]
    return sorted(grid, key=lambda c: (c.m * c.ef_construction, QUANT_RANK.get(c.quantization, 9), c.m))


def variants(build: Candidate, rescoring: bool = True) -> list[Candidate]:
    """The search settings measured on one build, cheapest query first."""
    mults = RESCORE_MULTIPLIERS.get(build.quantization, (0,)) if rescoring else (0,)
    return [replace(build, fetch_multiplier=f) for f in mults if rescoring or f == 0]


def rescoring_wanted(ranked: bool, fitting: Sequence[Candidate]) -> bool:
    """Rescored variants (i8 and b1 over more candidates) are measured under --max-memory, or when no unquantized
    structure fits: otherwise the fastest search wins, and rescoring reads every candidate's full vector from its
    granule. On 1M rows in 16 graphs (bf16 M=12 ef_c=24, 26.9) search list 256 read recall@10 0.942 at p50 31 ms,
    the same recall rescored over k at 131 ms and over 4k at 418 ms; the growth bench's unbudgeted choices of
    i8 rescored searched at p50 1.5 s (2M rows) and 3.2 s (4M), where bf16 searched at 126 ms (2M)."""
    return ranked or all(c.quantization in LOSSY for c in fitting)


def by_memory(grid: Sequence[Candidate], memory: Callable[[Candidate], int]) -> list[Candidate]:
    """Under --max-memory: builds in the order of their projected memory, then of their build cost, so the
    first that reaches the target is the cheapest structure that does."""
    return sorted(grid, key=lambda c: (memory(c), c.m * c.ef_construction, QUANT_RANK.get(c.quantization, 9)))


def project_seconds(
    sample_seconds: float,
    sample_rows: int,
    rows: int,
    graph_rows: int | None = None,
    sample_graph_rows: int | None = None,
    exponent: float | None = None,
) -> float:
    """Full build seconds from the sample's (graphs of all the rows unless told otherwise; b = `exponent`, else
    growth.GRAPH_EXPONENT)."""
    full, sampled = graph_rows or rows, sample_graph_rows or sample_rows
    scale = rows / max(sample_rows, 1)
    if full <= sampled or sampled <= 1:
        return sample_seconds * scale
    return sample_seconds * scale * graph_cost(full, sampled, exponent)


@dataclass(frozen=True, slots=True)
class BuildTime:
    seconds: float
    cpu_seconds: float | None
    """The engine's CPU over the build (engine_cpu), None where the target does not say. Wall time on two shared
    cores swings with whatever else runs and with how many graphs build at once; a ratio of builds is read in
    CPU."""

    @property
    def cost(self) -> float:
        """What one build is compared with another by: CPU where known, else wall."""
        return self.cpu_seconds if self.cpu_seconds is not None else self.seconds


@dataclass(frozen=True, slots=True)
class Measured:
    """One candidate built on the sample: build seconds and recall@k at each search list size."""

    candidate: Candidate
    build_seconds: float
    recall: dict[int, float] = field(default_factory=dict)
    index_bytes: int = 0
    latency_ms: float = 0.0
    """Mean milliseconds per search at the largest list measured (the capacity plan scales it)."""
    build_cpu_seconds: float | None = None
    """The engine's CPU over the build (BuildTime), where the target says."""

    @property
    def build_cost(self) -> float:
        return BuildTime(self.build_seconds, self.build_cpu_seconds).cost

    def first_list_reaching(self, target: float) -> int | None:
        reached = [size for size, r in sorted(self.recall.items()) if r >= target]
        return reached[0] if reached else None

    def best(self) -> float:
        return max(self.recall.values(), default=0.0)

    def plateaued(self) -> bool:
        """Recall stopped growing with the search list: the structure, not the search, is the limit."""
        points = [r for _, r in sorted(self.recall.items())]
        return len(points) >= 2 and points[-1] - points[-2] < PLATEAU


@dataclass(frozen=True, slots=True)
class Needed:
    """The cheapest structure measured that reaches the target but does not fit the budget."""

    candidate: Candidate
    recall: float
    memory_bytes: int


@dataclass(frozen=True, slots=True)
class Choice:
    candidate: Candidate
    search_list: int
    sample_recall: float
    reached: bool
    reason: str
    needed: Needed | None = None


def _key(m: Measured, size: int, memory: Callable[[Candidate], int] | None) -> tuple[float, ...]:
    c = m.candidate
    cost = (m.build_cost, c.fetch_multiplier, size)
    return (memory(c), *cost) if memory is not None else cost


def choose(measured: Sequence[Measured], target: float, memory: Callable[[Candidate], int] | None = None) -> Choice:
    """The cheapest candidate that reaches `target` at some search list, with the smallest such list: by
    measured build cost (CPU where the target says, else wall), or (given `memory`, under --max-memory) by
    projected memory first. Ranked by build cost, a candidate that reaches it at a reasonable list (≤
    REASONABLE_LIST, where the grid stops) comes before one that needs a longer list (at_reasonable_lists).
    If none does, the best recall seen, saying so."""
    if not measured:
        raise ValueError("nothing measured")
    reaching = [(m, m.first_list_reaching(target)) for m in measured]
    ok = [(m, size) for m, size in reaching if size is not None]
    if ok and memory is None:
        ok = at_reasonable_lists(ok)
    if ok:
        best, size = min(ok, key=lambda ms: _key(ms[0], ms[1], memory))
        others = len(ok) - 1
        what = "smallest structure" if memory is not None else "cheapest build"
        reason = (
            f"{what} that reaches recall@10 ≥ {target:.2f} (at search list {size}; "
            f"{best.build_seconds:.1f} s on the sample"
            + (f", {others} other candidate(s) also reach it but cost more" if others else "")
            + ")"
        )
        return Choice(best.candidate, size, best.recall[size], True, reason)
    top = max(measured, key=lambda m: (m.best(), -m.build_seconds))
    size, rec = (
        max(top.recall.items(), key=lambda kv: (kv[1], -kv[0])) if top.recall else (DEFAULT_SEARCH_LISTS[-1], 0.0)
    )
    reason = (
        f"no candidate reaches recall@10 {target:.2f} on the sample; best seen {rec:.3f} at search list {size} "
        "(raise the grid with --m/--ef-construction, or lower --recall-target)"
    )
    return Choice(top.candidate, size, rec, False, reason)


def at_reasonable_lists(ok: list[tuple[Measured, int]]) -> list[tuple[Measured, int]]:
    """The candidates that reach the target at a reasonable search list, if any do, else all that reach it. A
    structure that reaches it only at a longer list searches twice the candidates for every query, and stands
    nearest the edge of the sample's recall: the 4M-row growth table's tuner chose bf16 M=12 ef_c=64 at search
    list 512 where the 1M table's look ahead had named M=16 ef_c=64, so which neighbour won turned on the
    sample's noise (bench/growth.py)."""
    short = [(m, size) for m, size in ok if size <= REASONABLE_LIST]
    return short or ok


def should_stop(m: Measured, target: float, reasonable: int = REASONABLE_LIST) -> bool:
    """Early stop: this candidate already reaches the target at a reasonable search list, and the rest of the
    grid is ordered by expected cost, so none of it would be cheaper to build."""
    size = m.first_list_reaching(target)
    return size is not None and size <= reasonable


def ceilinged(measured: Sequence[Measured], target: float) -> set[tuple[str, int]]:
    """(quantization, fetch multiplier) pairs of a lossy quantization (i8, b1) whose recall plateaued below the
    target: a larger M or ef_construction does not lift a quantization's ceiling (i8 unrescored read 0.784 at
    search lists 64 and 256 alike on 10k clustered rows, bench/shapes.py; 0.85–0.87 whatever M and
    ef_construction on the noisy shape), so the grid skips the rest of them. bf16 is never skipped so: its
    plateau is the graph's, which a larger M does lift."""
    return {
        (m.candidate.quantization, m.candidate.fetch_multiplier)
        for m in measured
        if m.candidate.quantization in LOSSY and m.plateaued() and m.best() < target
    }


@dataclass(frozen=True, slots=True)
class GridRow:
    """One line of the printed grid."""

    label: str
    recall: dict[int, float]
    build_seconds: float
    projected_seconds: float
    projected_bytes: int


@dataclass(frozen=True, slots=True)
class TuneReport:
    column: str
    rows: int
    dim: int
    sample_rows: int
    queries: int
    target: float
    search_lists: tuple[int, ...]
    measured: tuple[Measured, ...]
    choice: Choice
    layout: Layout
    """How the table's graphs will be laid out."""
    skipped: tuple[Candidate, ...] = ()
    notes: tuple[str, ...] = ()
    sample_graph_rows: int | None = None
    """Rows of a graph in the scratch table (None: one graph over the whole sample)."""
    grid: tuple[Candidate, ...] = ()
    """The candidates in the order measured (the look ahead measures them again in larger graphs)."""
    rescoring: bool = True
    ahead: tuple[Ahead, ...] = ()
    """What the tuner would choose at each --project-rows (vector/tune_ahead.py)."""

    def rows_for_print(self) -> list[GridRow]:
        return [
            GridRow(
                m.candidate.label(),
                m.recall,
                m.build_seconds,
                project_seconds(
                    m.build_seconds,
                    self.sample_rows,
                    self.rows,
                    self.layout.graph_rows,
                    self.sample_graph_rows,
                ),
                resident_bytes(self.rows, self.dim, m.candidate.quantization, m.candidate.m),
            )
            for m in self.measured
        ]

    def choice_line(self) -> str:
        c = self.choice
        proj = next(r for r in self.rows_for_print() if r.label == c.candidate.label())
        return (
            f"chose {c.candidate.label()}, search list {c.search_list}: {c.reason}; projected full build "
            f"{proj.projected_seconds:.0f} s over {self.rows:,} rows" + f" in {self.layout.describe()}"
        )

    def sample_line(self) -> str:
        graphs = f"graphs of {self.sample_graph_rows:,} rows" if self.sample_graph_rows else "one graph"
        return (
            f"{self.column}: tuned on {self.sample_rows:,} sampled rows in a scratch table (dropped afterwards, "
            f"{graphs}), {self.queries} query rows excluded from the sample, recall@10 against brute force; "
            f"projected build time = {BUILD_MODEL}"
        )


def chunks_under(texts: Sequence[str], budget: int) -> list[list[int]]:
    """Indexes of `texts` in consecutive groups whose total length stays under `budget` (at least one each)."""
    groups: list[list[int]] = []
    size = budget
    for i, t in enumerate(texts):
        if size + len(t) > budget or not groups:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += len(t) + 32
    return groups


def decide(
    measured: Sequence[Measured],
    fits: Callable[[Candidate], bool],
    memory: Callable[[Candidate], int],
    ranked: bool,
    target: float,
) -> Choice:
    """The choice among what `fits` the budget (all measured when none does); when it does not reach the target,
    the cheapest measured structure outside the budget that does is named with the memory it needs."""
    inside = [m for m in measured if fits(m.candidate)]
    choice = choose(inside or measured, target, memory if ranked else None)
    if not choice.reached:
        outside = [m for m in measured if m not in inside and m.first_list_reaching(target) is not None]
        if outside:
            need = min(outside, key=lambda m: (memory(m.candidate), m.build_seconds))
            rec = need.recall[need.first_list_reaching(target) or 0]
            choice = replace(choice, needed=Needed(need.candidate, rec, memory(need.candidate)))
    return choice


def chosen_build(measured: Sequence[Measured], choice: Choice) -> Measured | None:
    build = choice.candidate.build()
    return next((m for m in measured if m.candidate.build() == build), None)
