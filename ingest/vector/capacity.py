"""A capacity plan for a table you do not have yet: candidate structures × node counts, pure arithmetic.

Every figure is projected from measured constants (`Constants`): per structure, a build and its recall@10 and
latency measured on a sample (the tuner's grid recorded on the user's table, or DEFAULTS measured here), a load
rate per worker and the bytes a row takes on disk. The projections reuse the project's own models, so they change
with them: index memory is vector/sizing.resident_bytes (the RAM a loaded index holds; the vector index cache's limit
must be set to sizing.counted_bytes, which the plan prints beside it),
build time is vector/growth.scale_build_seconds (Σ G^(1+b) over the graphs, b = growth.GRAPH_EXPONENT), per node,
nodes building in parallel.
Each node holds rows / nodes (a Distributed table's shards); its index is laid out as `index` lays out a merged
table (growth.merged_graph_rows: at most max_graphs graphs a search visits, vector/graphs.py's policy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from ingest.core.schema import DEFAULT_INDEX_GRANULARITY
from ingest.vector.growth import merged_graph_rows, scale_build_seconds
from ingest.vector.sizing import formula_bytes, human_bytes, need
from ingest.vector.tune import Candidate

MEASURED_CORES = 2
"""The cores the default constants were measured on (this machine)."""


@dataclass(frozen=True, slots=True)
class Structure:
    """One index structure with what was measured of it on a sample."""

    candidate: Candidate
    recall_at_10: float
    search_list: int
    build_seconds: float
    sample_rows: int
    graph_rows: int
    """Rows of a graph in the sample the build and latency were measured on."""
    latency_ms: float

    def label(self) -> str:
        return self.candidate.label()


@dataclass(frozen=True, slots=True)
class Constants:
    structures: tuple[Structure, ...]
    load_rows_per_second: float
    """One worker's load rate (rows per second)."""
    disk_bytes_per_value: float
    """Bytes on disk per embedding value of a row (all embedding columns as stored)."""
    disk_bytes_other: float
    """Bytes on disk per row besides the embeddings (ids, urls, captions, ...)."""
    source: str
    load_source: str = ""
    cores: int = MEASURED_CORES


@dataclass(frozen=True, slots=True)
class Ask:
    rows: int
    dim: int
    nodes: int
    """The most nodes the user has (the plan also weighs fewer)."""
    max_memory: int | None
    """Index memory one node may spend (bytes); None = unbounded."""
    recall_target: float = 0.95
    workers_per_node: int = 1
    cores: int = MEASURED_CORES
    max_graphs: int = 16
    rows_per_granule: int = DEFAULT_INDEX_GRANULARITY
    """Rows per granule of the tables `run` creates (ClickHouse's own default holds ~2,400 LAION rows)."""
    max_build_hours: float | None = None
    """The longest index build the user will wait for (None: any); fewer nodes build longer."""


@dataclass(frozen=True, slots=True)
class Option:
    structure: Structure
    nodes: int
    rows_per_node: int
    memory_per_node_bytes: int
    """RAM the loaded index holds on a node (sizing.resident_bytes)."""
    cache_per_node_bytes: int
    """What that node's vector index cache counts for it: `vector_similarity_index_cache_size` must be at least this
    (sizing.counted_bytes)."""
    disk_per_node_bytes: int
    load_hours_per_worker: float
    load_hours: float
    build_hours: float
    recall_at_10: float
    latency_ms: float
    fits: bool
    reaches: bool
    in_time: bool = True
    """Built within Ask.max_build_hours."""

    @property
    def total_memory(self) -> int:
        return self.memory_per_node_bytes * self.nodes

    def as_json(self) -> dict[str, object]:
        c = self.structure.candidate
        return {
            "structure": self.structure.label(),
            "quantization": c.quantization,
            "m": c.m,
            "ef_construction": c.ef_construction,
            "fetch_multiplier": c.fetch_multiplier,
            "search_list": self.structure.search_list,
            "nodes": self.nodes,
            "rows_per_node": self.rows_per_node,
            "memory_per_node_bytes": self.memory_per_node_bytes,
            "cache_per_node_bytes": self.cache_per_node_bytes,
            "disk_per_node_bytes": self.disk_per_node_bytes,
            "load_hours_per_worker": round(self.load_hours_per_worker, 2),
            "load_hours": round(self.load_hours, 2),
            "build_hours": round(self.build_hours, 2),
            "recall_at_10": round(self.recall_at_10, 3),
            "latency_ms": round(self.latency_ms, 1),
            "fits": self.fits,
            "reaches_target": self.reaches,
            "within_build_hours": self.in_time,
        }


def node_counts(most: int) -> list[int]:
    """1, 2, 4, … up to `most`, and `most` itself."""
    counts = {most}
    n = 1
    while n < most:
        counts.add(n)
        n *= 2
    return sorted(counts)


def option(ask: Ask, k: Constants, s: Structure, nodes: int) -> Option:
    per_node = math.ceil(ask.rows / nodes)
    graph, graphs = merged_graph_rows(per_node, ask.rows_per_granule, ask.max_graphs)
    c = s.candidate
    sized = need(per_node, ask.dim, c.quantization, c.m)
    stored = per_node * (k.disk_bytes_per_value * ask.dim + k.disk_bytes_other)
    disk = int(stored + formula_bytes(per_node, ask.dim, c.quantization, c.m))
    speed = k.cores / max(ask.cores, 1)  # builds and searches spread over the node's cores
    build = scale_build_seconds(s.build_seconds, s.sample_rows, s.graph_rows, per_node, graph) * speed
    log_ratio = math.log(max(graph, 2)) / math.log(max(s.graph_rows, 2))
    latency = s.latency_ms * log_ratio * max(1.0, graphs / max(ask.cores, 1))
    one = ask.rows / k.load_rows_per_second / 3600
    return Option(
        s,
        nodes,
        per_node,
        sized.resident,
        sized.counted,
        disk,
        one,
        one / (nodes * max(ask.workers_per_node, 1)),
        build / 3600,
        s.recall_at_10,
        latency,
        ask.max_memory is None or sized.resident <= ask.max_memory,
        s.recall_at_10 >= ask.recall_target,
        ask.max_build_hours is None or build / 3600 <= ask.max_build_hours,
    )


@dataclass(frozen=True, slots=True)
class Plan:
    ask: Ask
    constants: Constants
    options: tuple[Option, ...]
    choice: Option | None
    reason: str


def plan(ask: Ask, k: Constants) -> Plan:
    """Every structure × node count up to ask.nodes; the choice is the one that fits and reaches the target on
    the fewest nodes, then with the least memory, then the fewest build hours (within --max-build-hours when given).
    None does: the reason says what hardware would (memory per node at ask.nodes, or nodes at ask.max_memory, for the
    smallest structure that reaches it; or, when only the build time stands in the way, the fastest build)."""
    options = tuple(option(ask, k, s, n) for s in k.structures for n in node_counts(ask.nodes))
    good = [o for o in options if o.fits and o.reaches and o.in_time]
    if good:
        best = min(good, key=lambda o: (o.nodes, o.total_memory, o.build_hours))
        within = f" within {ask.max_build_hours:g} h of build" if ask.max_build_hours is not None else ""
        return Plan(
            ask, k, options, best, f"cheapest plan that fits and reaches recall@10 {ask.recall_target:.2f}{within}"
        )
    slow = [o for o in options if o.fits and o.reaches]
    if slow:
        fastest = min(slow, key=lambda o: (o.build_hours, o.nodes))
        return Plan(ask, k, options, None, too_slow(ask, fastest))
    return Plan(ask, k, options, None, what_would_fit(ask, k, options))


def too_slow(ask: Ask, fastest: Option) -> str:
    """Memory is not the limit, the build time is: the fastest build that fits, and how many cores would do."""
    cores = math.ceil(ask.cores * fastest.build_hours / (ask.max_build_hours or fastest.build_hours))
    return (
        f"nothing builds within {ask.max_build_hours:g} h on up to {ask.nodes} node(s) of {ask.cores} core(s): the "
        f"fastest that fits and reaches recall@10 {ask.recall_target:.2f}, {fastest.structure.label()} on "
        f"{fastest.nodes} node(s), builds in {fastest.build_hours:.1f} h; more nodes, or ≥ {cores} cores a node"
    )


def what_would_fit(ask: Ask, k: Constants, options: Sequence[Option]) -> str:
    reaching = [o for o in options if o.reaches and o.nodes == ask.nodes]
    if not reaching:
        best = max(k.structures, key=lambda s: s.recall_at_10, default=None)
        seen = f"{best.recall_at_10:.3f} ({best.label()})" if best else "nothing measured"
        return f"no measured structure reaches recall@10 {ask.recall_target:.2f}: best {seen}"
    small = min(reaching, key=lambda o: o.memory_per_node_bytes)
    total = need(ask.rows, ask.dim, small.structure.candidate.quantization, small.structure.candidate.m).resident
    nodes = math.ceil(total / ask.max_memory) if ask.max_memory else ask.nodes
    limit = human_bytes(ask.max_memory) if ask.max_memory else "?"
    return (
        f"nothing fits {ask.nodes} node(s) × {limit}: the smallest structure that reaches recall@10 "
        f"{ask.recall_target:.2f}, {small.structure.label()}, needs {human_bytes(small.memory_per_node_bytes)} "
        f"per node on {ask.nodes} node(s), or ≥ {nodes} nodes of {limit}"
    )


def scaled(k: Constants, dim_measured: int, dim: int) -> Constants:
    """Measured constants are per dimension where that is what they depend on (disk bytes per value); build
    seconds and latency grow ~linearly with the dimension (each distance costs dim operations)."""
    if dim_measured == dim:
        return k
    f = dim / dim_measured
    structures = tuple(
        Structure(
            s.candidate,
            s.recall_at_10,
            s.search_list,
            s.build_seconds * f,
            s.sample_rows,
            s.graph_rows,
            s.latency_ms * f,
        )
        for s in k.structures
    )
    return replace(
        k,
        structures=structures,
        load_rows_per_second=k.load_rows_per_second / f,
        source=k.source + f"; build s, latency and load rate scaled from {dim_measured}-d to {dim}-d linearly",
    )


def _s(q: str, m: int, f: int, recall: float, build_s: float, ms: float) -> Structure:
    return Structure(Candidate(q, m, 64, f), recall, 256, build_s, DEFAULTS_SAMPLE, DEFAULTS_SAMPLE, ms)


DEFAULTS_DIM = 512
DEFAULTS_SAMPLE = 10_000
DEFAULTS = Constants(
    (
        _s("bf16", 16, 0, 0.984, 7.8, 3.0),
        _s("i8", 16, 0, 0.726, 2.6, 3.0),
        _s("i8", 16, 4, 0.990, 2.6, 155.0),
        _s("b1", 16, 16, 0.786, 2.2, 228.0),
        _s("b1", 16, 64, 0.996, 2.2, 233.0),
        _s("b1", 8, 64, 0.994, 0.9, 185.0),
    ),
    load_rows_per_second=1_000_000 / 17.7,
    disk_bytes_per_value=2 * 1209.2 / 512,
    disk_bytes_other=250.0,
    source=(
        "defaults measured here (2 cores, shared: load average 70–90): bench/shapes.py, 10,000 rows of 512-d, one "
        "graph, ef_c=64; recall@10 at search list 256 on the offset shape (un-centred, as CLIP embeddings are); "
        "build s and ms per search the fastest of its four synthetic shapes; disk 1,209 bytes per 512-d embedding "
        "column as stored (LZ4, measured on our 1M-row shard) + 250 bytes of texts per LAION row (Segments)"
    ),
    load_source="1,000,000 rows in 17.2–18.2 s per worker into ClickHouse 18.16 over HTTP (README, Benchmarks 6)",
)
"""`plan` without --target projects from these; with it, from the tuner's measurements on the user's table."""
