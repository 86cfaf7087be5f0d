"""What `index` measured, for machines (`--report FILE`) and for projecting a larger table (`--project-rows`).

The memory an index takes, loaded, is its uncompressed bytes (`system.data_skipping_indices`): a loaded graph
is its serialized vectors and links. Measured in chdb (bench/graph_cost.py: the process's RSS before and after one
search loads one graph of G rows, bf16 M=12, 512-d, 3 shapes, 3 rounds): 966–1,319 bytes a row at G = 15,625 …
250,000 where the index holds 1,141 uncompressed, whatever G. The vector index cache counts more
(`VectorSimilarityIndexCacheBytes`): usearch's arenas, which double as they fill, reserved and mostly untouched:
2,155 bytes a row at G = 62,500,
2,290 at 125,000, 1,283 at 250,000. That count is what the cache's limit is checked against (sizing's margin
covers it), not what the machine holds, and it does not grow with the rows (a 4M-row table's read 1.15× the
formula where 1M's read 1.92×), so projections scale the resident bytes. The cache's count is reported beside
them: its bytes per cell (one per graph) times the graphs, so an index larger than the cache is counted whole.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ingest.clickhouse.index_sql import index_bytes_sql, index_cache_sql
from ingest.clickhouse.vector_sql import VectorIndex
from ingest.core.errors import TargetError
from ingest.core.ids import TableRef
from ingest.sinks.base import Sink
from ingest.vector.graphs import Layout
from ingest.vector.growth import MeasuredBuild, Projection, project_range
from ingest.vector.tune import TuneReport

PHASES = ("tuning", "merge", "build", "check")


@dataclass
class IndexRunLog:
    """Seconds per phase of one `index` run and one entry per index (structure, bytes, projection)."""

    phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    """CPU seconds of this process per phase: on chdb the engine's own work (it runs in-process), on a server
    only the client's. Unlike wall time it does not grow with other processes' load."""
    indexes: list[dict[str, Any]] = field(default_factory=list)
    total_seconds: float = 0.0
    spans: list[tuple[str, float, float]] = field(default_factory=list)
    """(phase, start, end) on the system's monotonic clock (CLOCK_MONOTONIC, shared by every process here), so a
    bench can charge a loopback server's CPU, sampled from /proc, to the phase it was spent in."""
    _cpu_mark: float = field(default_factory=time.process_time)

    def add(self, phase: str, seconds: float) -> float:
        """Count `seconds` of wall (ending now) to `phase`, and the CPU since the previous phase ended; → that CPU."""
        now = time.process_time()
        cpu, self._cpu_mark = now - self._cpu_mark, now
        self.phases[phase] = self.phases.get(phase, 0.0) + seconds
        self.cpu[phase] = self.cpu.get(phase, 0.0) + cpu
        end = time.monotonic()
        self.spans.append((phase, end - seconds, end))
        return cpu

    def to_json(self) -> bytes:
        doc = {
            "phases_seconds": self.phases,
            "phases_cpu_seconds": self.cpu,
            "total_seconds": self.total_seconds,
            "phase_spans_monotonic": self.spans,
            "indexes": self.indexes,
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2)


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One built index: its structure, the build measured, and its bytes as ClickHouse reports them."""

    index: VectorIndex
    measured: MeasuredBuild
    graphs: int
    memory_bytes: int | None
    """Resident once loaded: the index's uncompressed bytes."""
    cache_bytes: int | None
    """What the vector index cache counts for it once loaded (usearch's arenas)."""
    disk_bytes: int | None
    """Compressed, on disk."""

    def as_dict(self, search_list: int | None) -> dict[str, Any]:
        ix = self.index
        return {
            "name": ix.name,
            "column": ix.column,
            "structure": ix.describe(),
            "quantization": ix.quantization,
            "m": ix.m,
            "ef_construction": ix.ef_construction,
            "granularity": ix.granularity,
            "search_list": search_list,
            "rows": self.measured.rows,
            "graphs": self.graphs,
            "graph_rows": self.measured.graph_rows,
            "build_seconds": self.measured.build_seconds,
            "build_cpu_seconds": self.measured.build_cpu_seconds,
            "memory_bytes": self.memory_bytes,
            "cache_bytes": self.cache_bytes,
            "disk_bytes": self.disk_bytes,
            "ahead": [a.as_dict() for a in self.measured.ahead],
        }


def sample_builds(tuned: TuneReport) -> list[dict[str, Any]]:
    """Each build the tuner measured on its sample (one entry per structure, search variants aside): what converts
    a projection of one structure into another's, both built on the same rows of the same machine."""
    seen: dict[str, dict[str, Any]] = {}
    for m in tuned.measured:
        c = m.candidate.build()
        seen.setdefault(
            c.label(),
            {
                "quantization": c.quantization,
                "m": c.m,
                "ef_construction": c.ef_construction,
                "build_seconds": m.build_seconds,
                "build_cpu_seconds": m.build_cpu_seconds,
                "sample_rows": tuned.sample_rows,
                "sample_graph_rows": tuned.sample_graph_rows,
            },
        )
    return list(seen.values())


@dataclass(frozen=True, slots=True)
class CacheState:
    bytes: int
    cells: int


async def cache_state(sink: Sink) -> CacheState:
    try:
        rows = await sink.query(index_cache_sql())
    except TargetError:
        return CacheState(0, 0)
    return CacheState(int(rows[0]["bytes"] or 0), int(rows[0]["cells"] or 0)) if rows else CacheState(0, 0)


async def index_sizes(sink: Sink, ref: TableRef, name: str) -> tuple[int | None, int | None]:
    """(uncompressed, compressed) bytes of the index over its parts: resident once loaded, and on disk."""
    rows = await sink.query(index_bytes_sql(ref, name))
    return (int(rows[0]["b"]), int(rows[0]["c"])) if rows else (None, None)


def cache_bytes(before: CacheState, after: CacheState, graphs: int) -> int | None:
    """What the cache counts for the loaded index: bytes per cell its searches added to the cache, times its
    graphs (all the cache's cells when the loading evicted some: they are graphs of about one size too)."""
    added, cells = after.bytes - before.bytes, after.cells - before.cells
    if cells > 0 and added > 0:
        return int(added / cells * graphs)
    if after.cells > 0:
        return int(after.bytes / after.cells * graphs)
    return None


def projections(measured: MeasuredBuild, rows: Sequence[int], layout: Layout, max_graphs: int) -> list[Projection]:
    """One projection per --project-rows (growth.project_build), in the layout `index` would make there, with the
    range's ends where a sample reading higher or lower would choose otherwise (growth.project_range)."""
    return [project_range(measured, n, layout.rows_per_granule, max_graphs) for n in sorted(set(rows))]
