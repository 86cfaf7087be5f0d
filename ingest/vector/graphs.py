"""How an index is laid out in HNSW graphs, and whether the table's parts are merged first. Pure: the facts
come from system.parts.

A graph never spans parts. By default ClickHouse builds one graph per part; `GRANULARITY g` builds one per g
granules instead. Smaller graphs build faster per row (an insert searches a smaller graph, which misses the
cache less) and recall more at the same search list, but every search visits every graph. Measured on 100k
synthetic rows in 2 parts (chdb, 2 cores, bf16 M=16 ef_c=32, 100 queries): one graph per part built in 7.1–7.3
s, recall@10 0.81–0.83 at search list 32 and 0.955–0.975 at 256, mean search 4.3–5.4 ms at 32; graphs of ~20k
rows 4.3 s, 0.92 and 0.99, 5.1 ms; graphs of ~5k rows 3.3 s, 0.99 and 0.99, 5.9–6.8 ms.

So the layout is a policy with one knob, `--max-graphs` (the most graphs a search visits): graphs as small as
keep the count within it, over a table merged first to one part per partition (bounded by the server's largest
merge), so each graph is built once over a final part instead of again at every background merge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ingest.vector.sizing import human_bytes


@dataclass(frozen=True, slots=True)
class PartStats:
    """One active part as system.parts reports it (granules without the final, empty mark)."""

    partition: str
    rows: int
    granules: int
    bytes: int


@dataclass(frozen=True, slots=True)
class GraphSize:
    """Graphs of `granules` granules of ~rows_per_granule rows: `graphs` of them over the table."""

    granules: int
    rows_per_granule: int
    graphs: int

    @property
    def rows(self) -> int:
        return self.granules * self.rows_per_granule


def graph_size(parts: Sequence[tuple[int, int]], max_graphs: int) -> GraphSize | None:
    """The fewest granules per graph that keep the graphs over all parts, given as (rows, granules), within
    `max_graphs`; None when that is a whole part anyway (or the table has no rows). Rows per granule are the
    densest part's (a part's last granule is usually partly filled)."""
    counted = [(r, g) for r, g in parts if g > 0]
    if not counted or max_graphs < 1:
        return None
    total, largest = sum(g for _, g in counted), max(g for _, g in counted)
    per = max(1, max(round(r / g) for r, g in counted))
    for g in range(max(1, math.ceil(total / max_graphs)), largest):
        graphs = sum(math.ceil(p / g) for _, p in counted)
        if graphs <= max_graphs:
            return GraphSize(g, per, graphs)
    return None


@dataclass(frozen=True, slots=True)
class Layout:
    """The plan: merge first or not, the parts the graphs will be built in, their size, and why."""

    parts: int
    merge: bool
    after: tuple[tuple[int, int], ...]
    graph: GraphSize | None
    why: str

    @property
    def graphs(self) -> int:
        """Graphs over the table once built: what every search visits."""
        return self.graph.graphs if self.graph is not None else len(self.after)

    @property
    def graph_rows(self) -> int:
        """Rows of the largest graph."""
        return self.graph.rows if self.graph is not None else max((r for r, _ in self.after), default=0)

    @property
    def rows_per_granule(self) -> int:
        """Rows of a granule: the graph's, else the densest part's (8192, ClickHouse's default, for none)."""
        if self.graph is not None:
            return self.graph.rows_per_granule
        counted = [(r, g) for r, g in self.after if g > 0]
        return max((round(r / g) for r, g in counted), default=8192)

    def describe(self) -> str:
        if self.graph is not None:
            return f"graphs of {self.graph.rows:,} rows, {self.graphs} per search"
        return f"one graph per part, {self.graphs} per search"


def plan_layout(parts: Sequence[PartStats], max_graphs: int, merge_cap: int | None, indexed: bool) -> Layout:
    """Merge first whenever a partition has more than one part, the table has no vector index yet (a merge would
    rebuild it) and it fits one merge (`merge_cap`: max_bytes_to_merge_at_max_space_in_pool). Parts left as they
    are keep merging in the background after the build, and every merge builds its part's graphs again: 500k rows
    in 10 parts, built per part, were merged during the build, which took 7–10× the build CPU of 250k rows and read
    recall@10 0.907–0.953 at search list 4096 (bench/growth.py, README "Growth")."""
    n, size = len(parts), sum(p.bytes for p in parts)
    partitions = len({p.partition for p in parts})
    merge = False
    if n <= partitions:
        why = f"{n} part{'' if n == 1 else 's'}, one per partition: built as {'it is' if n == 1 else 'they are'}"
    elif indexed:
        why = f"{n} parts: not merged, a merge would rebuild the vector index the table has; built per part"
    elif merge_cap is not None and size > merge_cap:
        why = f"{n} parts, {human_bytes(size)}: larger than one merge may be, built per part"
    else:
        merge = True
        why = f"{n} parts: merged first, one part per partition (a later merge would build their graphs again)"
    if merge:
        by_partition: dict[str, tuple[int, int]] = {}
        for p in parts:
            rows, granules = by_partition.get(p.partition, (0, 0))
            by_partition[p.partition] = (rows + p.rows, granules + p.granules)
        after = tuple(by_partition.values())
    else:
        after = tuple((p.rows, p.granules) for p in parts)
    return Layout(n, merge, after, graph_size(after, max_graphs), why)


MAX_SAMPLE_ROWS = 200_000
"""The tuning sample grows past --sample-rows to hold two of the table's graphs, up to this many rows. Measured on
1M synthetic rows in 16 graphs of 64k rows, bf16 M=12 ef_c=24: one 20k-row sample graph read recall@10 0.95 at
search list 64 where the table reads 0.88 (0.938 at 256); two 64k-row sample graphs read 0.834 at 64 and 0.946
at 256. That sample built a candidate in 7.6 s; tuning took 38 s instead of 2 (the whole `index`, 159 s)."""


@dataclass(frozen=True, slots=True)
class SamplePlan:
    rows: int
    graph: GraphSize | None
    """The scratch table's graphs: the table's size when the sample holds one whole, else None (one graph)."""
    note: str | None


def plan_sample(graph: GraphSize | None, asked: int, available: int, cap: int = MAX_SAMPLE_ROWS) -> SamplePlan:
    """Sample rows and the scratch table's graphs, so that the sample measures graphs of the size the table
    gets: `asked` rows, more if two such graphs need more (up to `cap` and the rows there are)."""
    if graph is None:
        return SamplePlan(min(asked, available), None, None)
    rows = min(available, max(asked, min(2 * graph.rows, cap)))
    if rows < graph.rows:
        return SamplePlan(
            rows,
            None,
            f"the sample of {rows:,} rows holds less than one graph of {graph.rows:,}: it is measured as one graph "
            "(the build projection scales it to the table's graphs by G^b; the check on the full index sets the list)",
        )
    grown = f"sample grown to {rows:,} rows to hold graphs of {graph.rows:,} rows" if rows > asked else None
    return SamplePlan(rows, graph, grown)


def graphs_over(parts: Sequence[PartStats], granularity: int | None) -> tuple[int, int]:
    """(graphs, rows of the largest) an index of `granularity` index granules per graph has over `parts` as they
    stand (no granularity: one graph per part)."""
    graphs, largest = 0, 0
    for part in parts:
        n = max(1, math.ceil(part.granules / granularity)) if granularity else 1
        graphs += n
        largest = max(largest, math.ceil(part.rows / n))
    return graphs, largest
