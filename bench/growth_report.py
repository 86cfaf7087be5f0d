"""The growth bench's figures (one Row per size, saved as JSON) and its printed tables, fits and projection
lines (bench/growth.py runs the processes)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ingest.vector.growth import MeasuredBuild, Projection

TOLERANCE = 0.25
"""The projection must land within ±25% of the measurement."""
MAX_GRAPHS = 16
"""`index`'s default --max-graphs, which the bench leaves as it is."""


@dataclass
class Ran:
    seconds: float
    peak_rss_mb: float
    out: str = ""
    cpu_seconds: float = 0.0
    """User + system CPU of the process (chdb: the engine's work too, it runs in-process)."""


@dataclass
class Row:
    """One size's figures, saved as JSON after each size (so a long run that is stopped keeps what it measured)."""

    rows: int
    load: Ran
    server_rss_mb: float | None
    parts: int
    index: Ran
    index_server_cpu: float
    report: dict[str, Any]
    """`index --report` (seconds and CPU seconds per phase, their monotonic spans, each index's structure, graphs,
    rows per graph, memory, projection) and, over HTTP, the server's CPU seconds per phase."""
    evaluation: dict[str, Any]
    loadavg: list[str] | None = None
    """/proc/loadavg before `index` and after `eval`."""
    same: dict[str, Any] | None = None
    """`index --report` of the smallest size's structure built at this size with given parameters (the tuned
    index dropped first), when the tuner chose another structure here: what the projection is held to."""

    @property
    def entry(self) -> dict[str, Any]:
        return dict(self.report["indexes"][0])

    def phase(self, name: str) -> float:
        return float(self.report["phases_seconds"].get(name, 0.0))

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["load"], d["index"] = {**self.load.__dict__, "out": ""}, {**self.index.__dict__, "out": ""}
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Row:
        return Row(**{**d, "load": Ran(**d["load"]), "index": Ran(**d["index"])})


def mib(n: float | None) -> str:
    return "—" if n is None else f"{n / (1 << 20):,.0f}"


def formula_mib(e: dict[str, Any], sized: bool = False) -> float:
    """ClickHouse's documented estimate, or (`sized`) the resident bytes `index` sizes it at before building it."""
    from ingest.vector.sizing import formula_bytes, resident_bytes

    size = resident_bytes if sized else formula_bytes
    return size(int(e["rows"]), 512, str(e["quantization"]), int(e["m"])) / (1 << 20)


def structure(e: dict[str, Any]) -> str:
    return f"{e['quantization']} M={e['m']} ef_c={e['ef_construction']} {e['graphs']}×{e['graph_rows'] // 1000}k"


def print_tables(title: str, rows: list[Row]) -> None:
    print(f"\n## {title}")
    print(
        f"{'rows':>9} {'load s':>7} {'rows/s':>8} {'RSS MB':>7} {'srv MB':>7} {'parts':>5} {'index s':>8} "
        f"{'tune s':>7} {'merge s':>7} {'build s':>7} {'check s':>7} {'CPU s':>7}  {'structure':<28}"
    )
    for r in rows:
        print(
            f"{r.rows:>9,} {r.load.seconds:>7.1f} {r.rows / r.load.seconds:>8,.0f} {r.load.peak_rss_mb:>7.0f} "
            f"{r.server_rss_mb or 0:>7.0f} {r.parts:>5} {r.index.seconds:>8.1f} {r.phase('tuning'):>7.1f} "
            f"{r.phase('merge'):>7.1f} {least_build(r)[0]:>7.1f} {r.phase('check'):>7.1f} "
            f"{r.index.cpu_seconds + r.index_server_cpu:>7.0f}  {structure(r.entry):<28}"
        )
    print(
        f"{'rows':>9} {'mem MiB':>8} {'cache MiB':>9} {'disk MiB':>8} {'formula':>8} {'sized':>7} {'L':>5} "
        f"{'recall@10':>9} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'brute p50':>9} {'brute p99':>9}"
    )
    for r in rows:
        e, ev = r.entry, r.evaluation
        sweep = ev["sweep"][0]
        print(
            f"{r.rows:>9,} {mib(e['memory_bytes']):>8} {mib(e.get('cache_bytes')):>9} {mib(e['disk_bytes']):>8} "
            f"{formula_mib(e):>8,.0f} "
            f"{formula_mib(e, sized=True):>7,.0f} {ev['hnsw_candidate_list_size_for_search']:>5} "
            f"{ev['recall_at_10']:>9.3f} "
            f"{sweep['p50_ms']:>7.1f} {sweep['p99_ms']:>7.1f} {ev['brute_force_median_ms']:>9.1f} "
            f"{ev['brute_force_p99_ms']:>9.1f}"
        )
    print(
        "(RSS MB: peak of our `run`, with the engine in it for chdb; srv MB: the server's peak; build s: the lesser "
        "of two builds where `index --project-rows` built it again (index s counts both); CPU s: of `index` "
        "and, over HTTP, of the server while it ran; mem MiB: the loaded index, resident: its uncompressed bytes "
        "(system.data_skipping_indices; bench/graph_cost.py matches them with RSS); cache MiB: what the vector index "
        "cache counts for it once loaded (VectorSimilarityIndexCacheBytes per cell × graphs: usearch's arenas, "
        "reserved); disk MiB: compressed; formula: rows × dim × bytes + rows × M × 8; sized: what `index` sizes it at "
        "before building, resident, sizing.resident_bytes)"
    )
    print_growth(rows)
    print_projection(rows)


def exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y over log x: y ~ x^b."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-9)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / den if den else 0.0


def print_growth(rows: list[Row]) -> None:
    from ingest.vector.growth import GRAPH_EXPONENT, build_work

    if len(rows) < 2:
        return
    n = [float(r.rows) for r in rows]
    graph = [float(r.entry["graph_rows"]) for r in rows]
    build = [least_build(r)[0] for r in rows]
    series = {
        "load rows/s": [r.rows / r.load.seconds for r in rows],
        "peak RSS (ours)": [r.load.peak_rss_mb for r in rows],
        "index build s": build,
        "index build CPU s": [build_cpu(r) or 0.0 for r in rows],
        "whole index s": [r.index.seconds for r in rows],
        "index memory MiB": [float(r.entry["memory_bytes"] or 0) / (1 << 20) for r in rows],
        "p50 indexed ms": [float(r.evaluation["sweep"][0]["p50_ms"]) for r in rows],
        "p50 brute force ms": [float(r.evaluation["brute_force_median_ms"]) for r in rows],
    }
    print("growth, y ~ rows^b (least squares over the sizes; b = 0 flat, 1 linear):")
    for name, ys in series.items():
        print(f"  {name:<20} b = {exponent(n, ys):5.2f}   " + "  ".join(f"{y:,.1f}" for y in ys))
    # an entry written before b was the constant may hold the graph_exponent `index --project-rows` read from
    # sample builds (too low, e8da9a4): this checkout's model, like the projection, uses the default
    work = [build_work(r.rows, int(r.entry["graph_rows"])) for r in rows]
    per_cpu = [(build_cpu(r) or 0.0) / w * 1e9 for r, w in zip(rows, work, strict=True)]
    per_wall = [x / w * 1e9 for x, w in zip(build, work, strict=True)]
    print(
        f"  build ÷ Σ G^(1+b) ns, b = {GRAPH_EXPONENT:.2f} (the default), CPU: "
        + "  ".join(f"{p:.2f}" for p in per_cpu)
        + "; wall: "
        + "  ".join(f"{p:.2f}" for p in per_wall)
        + f"  (the model holds if flat; G = rows of one graph: {', '.join(f'{g:,.0f}' for g in graph)})"
    )


def phase_cpu(r: Row, report: dict[str, Any], phase: str) -> float | None:
    """CPU seconds of one phase of `report`: `index`'s own on chdb (the engine runs in it), the server's plus ours
    over HTTP (sampled from /proc, charged by the phase's span); None when the run did not record it."""
    ours = report.get("phases_cpu_seconds", {}).get(phase)
    server = report.get("server_phases_cpu_seconds")
    if r.index_server_cpu and server is None:
        return None  # an HTTP run before the bench charged the server's CPU per phase
    return None if ours is None else float(ours) + float((server or {}).get(phase, 0.0))


def least_build(r: Row, report: dict[str, Any] | None = None) -> tuple[float, float | None]:
    """(wall, CPU) seconds of the build of `report` (default the row's tuned one): where `index --project-rows`
    built the index again (its 'rebuild' phase, vector/index_rebuild.py), the lesser of the two by CPU, as the
    projection's base is (over HTTP `index` keeps the lesser by wall, all it can read; the bench reads the
    server's CPU from /proc); else the one build."""
    report = r.report if report is None else report
    builds = [
        (float(report["phases_seconds"].get(phase, 0.0)), phase_cpu(r, report, phase))
        for phase in ("build", "rebuild")
        if float(report["phases_seconds"].get(phase, 0.0)) > 0
    ]
    if not builds:
        return 0.0, None
    return min(builds, key=lambda b: b[1] if b[1] is not None else b[0])


def build_cpu(r: Row, report: dict[str, Any] | None = None) -> float | None:
    """CPU seconds of the (lesser) build of `report` (least_build)."""
    return least_build(r, report)[1]


def structure_key(e: dict[str, Any]) -> tuple[str, int, int]:
    """Quantization, M and ef_construction of an index entry: what `index --quantization --m --ef-construction`
    takes (graphs per search and rescoring are the table's and the search's, not the build's)."""
    return str(e["quantization"]), int(e["m"]), int(e["ef_construction"])


def measured_build(r: Row) -> MeasuredBuild:
    from ingest.vector.growth import Ahead, MeasuredBuild

    e = r.entry
    return MeasuredBuild(
        r.rows,
        512,
        str(e["quantization"]),
        int(e["m"]),
        int(e["graph_rows"]),
        least_build(r)[0],
        e["memory_bytes"],
        build_cpu(r),
        tuple(Ahead.from_dict(a) for a in e.get("ahead") or []),
    )


def print_projection(rows: list[Row]) -> None:
    """The projection from the smallest table (growth.project_build, the function `index --project-rows` calls,
    with the structure the tuner chose looking ahead to that size) at each larger size measured, against the
    measurement; then the smallest size's own structure projected against that structure built there with given
    parameters (the model of one structure's growth alone); and what `index` printed during the run, if its
    model differs from this checkout's."""
    from ingest.vector.growth import DECISION_NOISE, ENDS, project_build, project_range

    first = rows[0]
    e = first.entry
    rows_per_granule = int(e["graph_rows"]) // max(1, int(e["granularity"] or 1))
    built = measured_build(first)
    cores = built.cores_used
    for last in rows[1:]:
        proj = project_range(built, last.rows, rows_per_granule, MAX_GRAPHS)
        said = next((p for p in e.get("projections") or [] if int(p["rows"]) == last.rows), {})
        ahead = built.ahead_at(last.rows)
        chose = structure(last.entry)
        looked = "no look ahead to this size" if ahead is None else f"looking ahead, the tuner chose {ahead.label}"
        for end, how in ENDS.items() if ahead is not None else ():
            if (other := getattr(ahead, end)) is not None:
                looked += f", or {other.label} on a sample reading recall {DECISION_NOISE:g} {how}"
        print(
            f"projection from {first.rows:,} rows vs measured at {last.rows:,} ({looked}; at this size it chose "
            f"{chose})" + (f"; the build used {cores:.2f} cores at {first.rows:,} rows" if cores else "") + ":"
        )
        mem = last.entry["memory_bytes"] or 0
        figures: list[tuple[str, Callable[[Projection], float | None], float, Any]] = [
            ("build s", lambda p: p.build_seconds, least_build(last)[0], said.get("build_seconds")),
            ("build CPU s", lambda p: p.build_cpu_seconds, build_cpu(last) or 0.0, said.get("build_cpu_seconds")),
            (
                "index memory MiB",
                lambda p: p.index_bytes / (1 << 20),
                mem / (1 << 20),
                (said.get("index_bytes") or 0) / (1 << 20),
            ),
        ]
        for name, value, me, printed in figures:
            lo, hi = proj.span(value)
            if not hi or not me:
                continue
            then = ""
            point = value(proj) or 0.0
            if printed and abs(float(printed) - point) > 0.005 * point:
                then = f"; `index` printed {float(printed):,.0f} during the run (ratio {float(printed) / me:.2f})"
            print((verdict(name, lo, me) if lo == hi else verdict_range(name, lo, hi, me)) + then)
        if last.same is None:
            continue
        own = project_build(built, last.rows, rows_per_granule, MAX_GRAPHS, structure=False)
        like = last.same["indexes"][0]
        print(
            f"  {structure(like)}, built at {first.rows:,}, projected and built at {last.rows:,} with given parameters:"
        )
        checks = [
            ("build s", own.build_seconds, least_build(last, last.same)[0]),
            ("build CPU s", own.build_cpu_seconds or 0.0, build_cpu(last, last.same) or 0.0),
            ("index memory MiB", own.index_bytes / (1 << 20), (like["memory_bytes"] or 0) / (1 << 20)),
        ]
        for name, pr, me in checks:
            if pr and me:
                print(verdict(name, pr, me))


def verdict_range(name: str, lo: float, hi: float, measured: float) -> str:
    """A projected range (the choices a larger table's tuner makes on samples reading recall 0.02 higher or lower
    than the look ahead's): within when the measurement is within ±25% of some point of it."""
    ok = "within" if lo / measured <= 1 + TOLERANCE and hi / measured >= 1 - TOLERANCE else "OUTSIDE"
    return (
        f"  {name:<17} projected {lo:>8,.0f}–{hi:,.0f}  measured {measured:>8,.0f}  ratio "
        f"{lo / measured:.2f}–{hi / measured:.2f} ({ok} ±25% of the range)"
    )


def verdict(name: str, projected: float, measured: float) -> str:
    ratio = projected / measured
    ok = "within" if abs(ratio - 1) <= TOLERANCE else "OUTSIDE"
    return f"  {name:<17} projected {projected:>8,.0f}  measured {measured:>8,.0f}  ratio {ratio:.2f} ({ok} ±25%)"


def main() -> None:
    """Reprint a run's tables and projections from its saved figures with this checkout's model:
    python bench/growth_report.py WORK/chdb-rows.json [WORK/http-rows.json ...]"""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's `ingest`
    for path in sys.argv[1:]:
        rows = sorted((Row.from_dict(d) for d in json.loads(Path(path).read_text())), key=lambda r: r.rows)
        print_tables(f"growth (reprinted from {path} by this checkout's growth.project_build)", rows)


if __name__ == "__main__":
    main()
