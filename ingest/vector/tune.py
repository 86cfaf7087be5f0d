"""Which HNSW index to build: a small grid measured on a sample, and the cheapest build that reaches the recall
target. Everything here is pure (the measuring is in vector/tune_run.py), so the choice is unit-tested.

Projected full build time (stated in the output): HNSW inserts each vector with a greedy search of cost
~log(n) (Malkov & Yashunin 2018, §4.2), so a build over n rows costs ~n·log n and

    seconds(N) ≈ seconds(n_sample) × (N / n_sample) × (ln N / ln n_sample).

Graphs of a fixed size (vector/graphs.py) cost the same per row however many there are, so with graphs of G
rows in the table and of g in the sample: seconds(N) ≈ seconds(n_sample) × (N / n_sample) × (ln G / ln g).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ingest.clickhouse.index_sql import RESCORING_SETTING
from ingest.vector.graphs import Layout
from ingest.vector.sizing import index_bytes

BUILD_MODEL = (
    "sample build s × (N/n) × (ln G / ln g), G and g the rows of a graph in the table and in the sample: "
    "HNSW insert cost ~ log of the graph's size (Malkov & Yashunin 2018)"
)
DEFAULT_SEARCH_LISTS = (32, 64, 128, 256, 512)
REASONABLE_LIST = 256
"""Stop the grid early once a candidate reaches the target at a search list no larger than this."""


def query_extras(quantization: str) -> dict[str, int]:
    """Search settings an index of this quantization needs: b1 only with rescoring on the full vectors
    (without it recall collapses, ClickHouse #103745)."""
    return {RESCORING_SETTING: 1} if quantization == "b1" else {}


@dataclass(frozen=True, slots=True, order=True)
class Candidate:
    quantization: str
    m: int
    ef_construction: int

    def label(self) -> str:
        return f"{self.quantization} M={self.m} ef_c={self.ef_construction}"


def default_grid(
    quantizations: Sequence[str] = ("bf16", "i8"),
    ms: Sequence[int] = (12, 16, 32),
    efs: Sequence[int] = (24, 32, 64, 128),
) -> list[Candidate]:
    """Candidates in the order of their expected build cost (M × ef_construction), so the grid can stop at the
    first that reaches the target. At equal cost bf16 comes first: measured here, i8 builds no faster and
    recalls less (it only saves memory, which the sizing step weighs), and b1 needs rescoring. An
    ef_construction under 2·M is left out: each node would choose its M links from barely more candidates than
    it keeps."""
    rank = {"bf16": 0, "f16": 1, "i8": 2, "b1": 3, "f32": 4, "f64": 5}
    grid = [Candidate(q, m, ef) for q in quantizations for m in ms for ef in efs if ef >= 2 * m]
    return sorted(grid, key=lambda c: (c.m * c.ef_construction, rank.get(c.quantization, 9), c.m))


def project_seconds(
    sample_seconds: float,
    sample_rows: int,
    rows: int,
    graph_rows: int | None = None,
    sample_graph_rows: int | None = None,
) -> float:
    """Full build seconds from the sample's (graphs of all the rows unless told otherwise)."""
    full, sampled = graph_rows or rows, sample_graph_rows or sample_rows
    scale = rows / max(sample_rows, 1)
    if full <= sampled or sampled <= 1:
        return sample_seconds * scale
    return sample_seconds * scale * (math.log(full) / math.log(sampled))


@dataclass(frozen=True, slots=True)
class Measured:
    """One candidate built on the sample: build seconds and recall@k at each search list size."""

    candidate: Candidate
    build_seconds: float
    recall: dict[int, float] = field(default_factory=dict)
    index_bytes: int = 0

    def first_list_reaching(self, target: float) -> int | None:
        reached = [size for size, r in sorted(self.recall.items()) if r >= target]
        return reached[0] if reached else None


@dataclass(frozen=True, slots=True)
class Choice:
    candidate: Candidate
    search_list: int
    sample_recall: float
    reached: bool
    reason: str


def choose(measured: Sequence[Measured], target: float) -> Choice:
    """The cheapest build (measured seconds) that reaches `target` at some search list, with the smallest such
    list; if none does, the best recall seen at the largest list, saying so."""
    if not measured:
        raise ValueError("nothing measured")
    reaching = [(m, m.first_list_reaching(target)) for m in measured]
    ok = [(m, size) for m, size in reaching if size is not None]
    if ok:
        best, size = min(ok, key=lambda ms: (ms[0].build_seconds, ms[1]))
        assert size is not None
        others = len(ok) - 1
        reason = (
            f"cheapest build that reaches recall@10 ≥ {target:.2f} (at search list {size}; "
            f"{best.build_seconds:.1f} s on the sample"
            + (f", {others} other candidate(s) also reach it but build slower" if others else "")
            + ")"
        )
        return Choice(best.candidate, size, best.recall[size], True, reason)
    top = max(measured, key=lambda m: (max(m.recall.values(), default=0.0), -m.build_seconds))
    size, rec = (
        max(top.recall.items(), key=lambda kv: (kv[1], -kv[0])) if top.recall else (DEFAULT_SEARCH_LISTS[-1], 0.0)
    )
    reason = (
        f"no candidate reaches recall@10 {target:.2f} on the sample; best seen {rec:.3f} at search list {size} "
        "(raise the grid with --m/--ef-construction, or lower --recall-target)"
    )
    return Choice(top.candidate, size, rec, False, reason)


def should_stop(m: Measured, target: float, reasonable: int = REASONABLE_LIST) -> bool:
    """Early stop: this candidate already reaches the target at a reasonable search list, and the rest of the
    grid is ordered by expected cost, so none of it would be cheaper to build."""
    size = m.first_list_reaching(target)
    return size is not None and size <= reasonable


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
                index_bytes(self.rows, self.dim, m.candidate.quantization, m.candidate.m),
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
