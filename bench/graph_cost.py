"""What one HNSW graph costs as it grows: build CPU per row and memory per row at graph sizes G, per data shape,
in the embedded ClickHouse (chdb 26.9, in this process, so its CPU and RSS are this process's).

Two models rest on it (vector/sizing.py): the build projection (per-row cost ∝ G^b, where HNSW's ~ln G hops
predict far less growth) and the memory projection (a loaded index is resident at its uncompressed bytes, while the
vector index cache counts usearch's reserved arenas, which do not grow with the rows).

Per shape (synth's clustered, noisy, offset; `minilm`: real sentence embeddings, 384-d, of distinct lines of
Debian's documentation in shuffled order, bench/shapes.py, `pip install '.[shapes]'`), structure and round, for
each G: one INSERT of G rows (one part), ADD INDEX
with one graph per part, MATERIALIZE (CPU and wall of the build), drop the vector index cache, RSS, one search
(loads the graph), RSS again; the cache's bytes for it and the index's uncompressed bytes. Prints per G the
min–max over rounds (rounds interleave the shapes and structures), and b fitted end to end and per step; with
more than one --structure, each one's build CPU over the first's at each G (what the tuner's sample builds
convert between).

Run: python bench/graph_cost.py [--sizes 15625,62500,250000] [--shapes clustered,noisy,offset,minilm]
     [--structure bf16,12,24 [--structure bf16,16,32]] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))  # shapes.minilm

from ingest.stages.synth import SynthSpec, vectors  # noqa: E402
from ingest.vector.sizing import BYTES_PER_VALUE  # noqa: E402


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


MINILM_CACHE = Path(tempfile.gettempdir()) / "laion_minilm_graph_cost.npy"


def shape_rows(rows: int, shape: str) -> np.ndarray:
    """`rows` float32 vectors of `shape`: synth's, or real MiniLM embeddings in a fixed shuffled order (the lines
    come sorted by file; a table's rows arrive in no such order), rounded through float16 as LAION ships them."""
    if shape == "minilm":
        from shapes import minilm

        vecs, _ = minilm(rows, MINILM_CACHE)
        order = np.random.default_rng(3).permutation(len(vecs))
        return np.asarray(vecs[order].astype(np.float16), dtype=np.float32)
    spec = SynthSpec(rows=rows, shape=shape, dtype="float32", seed=3)
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(spec.clusters, spec.dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    img, _ = vectors(spec, rng, centers)
    return np.asarray(img, dtype=np.float32)


def write_rows(path: Path, rows: int, shape: str) -> int:
    """Write the shape's rows as (id, v) parquet; returns their dimension."""
    vecs = shape_rows(rows, shape)
    dim = vecs.shape[1]
    flat = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), dim).cast(pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": np.arange(rows), "v": flat}), path)
    return int(dim)


class Engine:
    def __init__(self, path: Path) -> None:
        from chdb import session

        self.s = session.Session(str(path))

    def rows(self, sql: str) -> list[dict[str, Any]]:
        text = self.s.query(sql, "JSONEachRow").bytes().decode()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def run(self, sql: str) -> None:
        self.s.query(sql)

    def metric(self, name: str) -> int:
        got = self.rows(f"SELECT value FROM system.metrics WHERE metric = '{name}'")
        return int(got[0]["value"]) if got else 0


def one_graph(db: Engine, data: Path, dim: int, g: int, structure: tuple[str, int, int]) -> dict[str, float]:
    q, m, ef = structure
    db.run("DROP TABLE IF EXISTS g SYNC")
    db.run("CREATE TABLE g (id Int64, v Array(Float32)) ENGINE = MergeTree ORDER BY id")
    db.run(
        f"INSERT INTO g SELECT id, v FROM file('{data}') WHERE id < {g} SETTINGS max_insert_block_size = 100000000, "
        "min_insert_block_size_rows = 100000000, min_insert_block_size_bytes = 0"
    )
    db.run(
        f"ALTER TABLE g ADD INDEX ix v TYPE vector_similarity('hnsw', 'cosineDistance', {dim}, '{q}', {m}, {ef}) "
        "GRANULARITY 100000000"
    )
    c0, t0 = cpu_seconds(), time.monotonic()
    db.run("ALTER TABLE g MATERIALIZE INDEX ix SETTINGS mutations_sync = 2")
    cpu, wall = cpu_seconds() - c0, time.monotonic() - t0
    db.run("SYSTEM DROP VECTOR SIMILARITY INDEX CACHE")
    vec = db.rows("SELECT v FROM g WHERE id = 7")[0]["v"]
    literal = "[" + ",".join(f"{x:.6f}" for x in vec) + "]"
    r0, t0 = rss_bytes(), db.metric("MemoryTracking")
    db.rows(f"SELECT id FROM g ORDER BY cosineDistance(v, {literal}) LIMIT 10")
    r1, t1 = rss_bytes(), db.metric("MemoryTracking")
    size = db.rows("SELECT data_uncompressed_bytes AS b FROM system.data_skipping_indices WHERE table = 'g'")
    return {
        "wall": wall,
        "cpu_us": cpu / g * 1e6,
        "rss": (r1 - r0) / g,
        "tracked": (t1 - t0) / g,
        "cache": db.metric("VectorSimilarityIndexCacheBytes") / g,
        "uncompressed": int(size[0]["b"]) / g,
    }


def span(xs: list[float], fmt: str) -> str:
    lo, hi = min(xs), max(xs)
    return format(lo, fmt) if len(xs) == 1 or format(lo, fmt) == format(hi, fmt) else f"{lo:{fmt}}–{hi:{fmt}}"


Structure = tuple[str, int, int]


def label(s: Structure) -> str:
    return f"{s[0]} M={s[1]} ef_c={s[2]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="15625,31250,62500,125000,250000", help="rows of one graph")
    ap.add_argument("--shapes", default="clustered,noisy,offset")
    ap.add_argument("--structure", action="append", help="quantization,M,ef_construction (repeatable)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    shapes = args.shapes.split(",")
    structures: list[Structure] = []
    for spec in args.structure or ["bf16,12,24"]:
        q, m, ef = spec.split(",")
        structures.append((q, int(m), int(ef)))
    work = Path(tempfile.mkdtemp(prefix="graph-cost-"))
    got: dict[tuple[Structure, str, int], list[dict[str, float]]] = {}
    try:
        dims = {shape: write_rows(work / f"{shape}.parquet", sizes[-1], shape) for shape in shapes}
        db = Engine(work / "db")
        for _ in range(args.rounds):
            for shape in shapes:
                for structure in structures:
                    for g in sizes:
                        run = one_graph(db, work / f"{shape}.parquet", dims[shape], g, structure)
                        got.setdefault((structure, shape, g), []).append(run)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for structure in structures:
        print_structure(structure, shapes, dims, sizes, got, args.rounds)
    if len(structures) > 1:
        print_ratios(structures, shapes, sizes, got)
    print(
        "(resident: the index's uncompressed bytes, system.data_skipping_indices; RSS: what this process grew by when "
        "one search loaded the graph, the cache dropped before; tracked: what ClickHouse's memory tracker "
        "(MemoryTracking, what max_server_memory_usage is checked against) grew by then; cache: "
        "VectorSimilarityIndexCacheBytes once loaded)"
    )


def print_structure(
    structure: Structure,
    shapes: list[str],
    dims: dict[str, int],
    sizes: list[int],
    got: dict[tuple[Structure, str, int], list[dict[str, float]]],
    rounds: int,
) -> None:
    q, m, ef = structure
    dim_text = "/".join(f"{d}" for d in sorted(set(dims.values())))
    print(f"## one graph of G rows: {q} M={m} ef_c={ef}, {dim_text}-d, chdb 26.9 in-process, {rounds} rounds (min–max)")
    formulas = ", ".join(f"{d}-d {d * BYTES_PER_VALUE[q] + m * 8:,.0f}" for d in sorted(set(dims.values())))
    print(f"(bytes a row: formula {formulas} = dim × bytes + M × 8)")
    head = f"{'shape':<10} {'G':>8} {'build s':>11} {'CPU µs/row':>13} {'b step':>7} {'resident B/row':>15}"
    print(head + f" {'RSS B/row':>13} {'tracked B/row':>13} {'cache B/row':>13}")
    for shape in shapes:
        prev: tuple[int, float] | None = None
        for g in sizes:
            runs = got[(structure, shape, g)]
            cpu = min(r["cpu_us"] for r in runs)
            step = f"{math.log(cpu / prev[1]) / math.log(g / prev[0]):.2f}" if prev else ""
            prev = (g, cpu)
            print(
                f"{shape:<10} {g:>8,} {span([r['wall'] for r in runs], '.2f'):>11} "
                f"{span([r['cpu_us'] for r in runs], '.0f'):>13} {step:>7} "
                f"{span([r['uncompressed'] for r in runs], ',.0f'):>15} {span([r['rss'] for r in runs], ',.0f'):>13} "
                f"{span([r['tracked'] for r in runs], ',.0f'):>13} {span([r['cache'] for r in runs], ',.0f'):>13}"
            )
        if len(sizes) < 2:
            continue
        lo, hi = got[(structure, shape, sizes[0])], got[(structure, shape, sizes[-1])]
        ratio = min(r["cpu_us"] for r in hi) / min(r["cpu_us"] for r in lo)
        b = math.log(ratio) / math.log(sizes[-1] / sizes[0])
        ln = math.log(sizes[-1]) / math.log(sizes[0])
        print(
            f"{shape}: CPU per row ×{ratio:.2f} from G = {sizes[0]:,} to {sizes[-1]:,}: b = {b:.2f} "
            f"(ln G would say ×{ln:.2f})"
        )


def print_ratios(
    structures: list[Structure],
    shapes: list[str],
    sizes: list[int],
    got: dict[tuple[Structure, str, int], list[dict[str, float]]],
) -> None:
    """Each structure's build CPU over the first's, per shape and G: min over min, and the range of the rounds'
    own ratios (each round builds both on the same rows back to back)."""
    base = structures[0]
    print(f"## build CPU over {label(base)}'s, per G (min/min; the rounds' own ratios min–max)")
    for other in structures[1:]:
        for shape in shapes:
            cells = []
            for g in sizes:
                a, b = got[(base, shape, g)], got[(other, shape, g)]
                mins = min(r["cpu_us"] for r in b) / min(r["cpu_us"] for r in a)
                own = [y["cpu_us"] / x["cpu_us"] for x, y in zip(a, b, strict=True)]
                cells.append(f"G={g:,}: {mins:.2f} ({span(own, '.2f')})")
            print(f"{label(other)} {shape:<10} " + "   ".join(cells))


if __name__ == "__main__":
    main()
