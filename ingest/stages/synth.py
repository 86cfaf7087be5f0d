"""Synthetic shards in LAION's exact layouts (400M, 5B, or a template): the test and demo data, since LAION
is unreachable from here.

Vectors are unit-norm and, by `shape`, clustered (so nearest-neighbour search means something), noisy (isotropic
noise outweighs the clusters) or offset (clustered around one common direction, as CLIP embeddings are: they are
not centred, which sign quantization (b1) is suspected to trip on); text vectors are correlated with their
image vector; metadata has all 15 LAION columns with captions that carry quotes, tabs, unicode and nulls, the
things that broke the tutorial's CSV path.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ingest.core.layout import LAION400M, Layout
from ingest.stages.shard import ShardFiles

WORDS = (
    "a dog",
    "two cats",
    "the ocean",
    "a red car",
    "mountains",
    "a bowl of ramen",
    "Paris at night",
    "a vintage camera",
    "children's toys",
    "sunflowers",
    'a "quoted" title',
    "l'été à Paris",
    "東京タワー",
    "a café",
    "ünïcödé text",
    "a robot 🤖",
    "snow\tstorm",
    "rock 'n' roll",
    "C:\\path\\pic",
    "50% off",
    "naïve art",
    "Ελληνικά",
    "كلمات",
    "a;b,c|d",
)
NSFW_VALUES = ("UNLIKELY", "UNSURE", "NSFW")
LICENSES = ("?", "creative commons", "cc-by-sa")


@dataclass(frozen=True, slots=True)
class SynthSpec:
    rows: int
    dim: int = 512
    seed: int = 0
    clusters: int = 32
    row_group_rows: int = 3000
    dtype: str = "float16"
    shape: str = "clustered"
    """clustered | noisy | offset (SHAPES)."""


SHAPES = {
    "clustered": (0.5, 0.0),
    "noisy": (2.0, 0.0),
    "offset": (0.5, 1.0),
}
"""shape → (noise norm relative to a unit cluster centre, weight of a common offset direction). noisy: the noise
is twice the centre's norm, so neighbours are decided mostly by noise; offset: every vector shares one direction
of the centre's weight, so two unrelated vectors have cosine ≈ 0.5 (CLIP ViT-B/32 image embeddings sit around
there too) and most coordinates have the same sign in most vectors."""


def unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    n[n == 0] = 1.0
    out: np.ndarray = x / n
    return out


def vectors(spec: SynthSpec, rng: np.random.Generator, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image vectors around cluster centres; text vectors near their image vector."""
    noise, offset = SHAPES[spec.shape]
    labels = rng.integers(0, len(centers), size=spec.rows)
    img = unit(centers[labels] + rng.normal(0.0, noise / np.sqrt(spec.dim), (spec.rows, spec.dim)))
    if offset:
        common = unit(np.random.default_rng([spec.seed, 7]).normal(size=(1, spec.dim)))
        img = unit(img + offset * common)
    txt = unit(img + rng.normal(0.0, 0.6 / np.sqrt(spec.dim), (spec.rows, spec.dim)))
    return img.astype(spec.dtype), txt.astype(spec.dtype)


def caption(rng: np.random.Generator) -> str:
    k = int(rng.integers(1, 5))
    return " ".join(WORDS[int(i)] for i in rng.integers(0, len(WORDS), size=k))


def metadata(spec: SynthSpec, shard: int, rng: np.random.Generator) -> pa.Table:
    """All 15 LAION metadata columns; caption/url/NSFW sometimes null."""
    n = spec.rows
    caps: list[str | None] = [caption(rng) for _ in range(n)]
    urls: list[str | None] = [f"https://img.example.com/{shard}/{i}.jpg?q='{i % 7}'" for i in range(n)]
    nsfw: list[str | None] = [NSFW_VALUES[int(v)] for v in rng.integers(0, 3, size=n)]
    for col, every in ((caps, 17), (urls, 53), (nsfw, 29)):
        for i in range(n):
            if (i * 7919 + shard) % every == 0:
                col[i] = None
    keys = [f"{shard:05d}{i:04d}" for i in range(n)]
    width = rng.integers(64, 1024, size=n)
    height = rng.integers(64, 1024, size=n)
    return pa.table(
        {
            "image_path": pa.array([f"{k}.jpg" for k in keys]),
            "caption": pa.array(caps, type=pa.string()),
            "NSFW": pa.array(nsfw, type=pa.string()),
            "similarity": pa.array(rng.uniform(0.28, 0.45, size=n), type=pa.float64()),
            "LICENSE": pa.array([LICENSES[int(v)] for v in rng.integers(0, 3, size=n)]),
            "url": pa.array(urls, type=pa.string()),
            "key": pa.array(keys),
            "status": pa.array(["success"] * n),
            "error_message": pa.array([None] * n, type=pa.string()),
            "width": pa.array(width, type=pa.int64()),
            "height": pa.array(height, type=pa.int64()),
            "original_width": pa.array(width * 2, type=pa.int64()),
            "original_height": pa.array(height * 2, type=pa.int64()),
            "exif": pa.array(["{}"] * n),
            "md5": pa.array([hashlib.md5(k.encode()).hexdigest() for k in keys]),
        }
    )


def write_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".npy.tmp")
    with tmp.open("wb") as f:
        np.save(f, arr)
    tmp.replace(path)


def write_shard(root: Path, shard: int, spec: SynthSpec, layout: Layout = LAION400M) -> ShardFiles:
    """Write one shard in `layout`; every shard of a seed has the same cluster centres, so search spans shards."""
    centers = unit(np.random.default_rng(spec.seed).normal(size=(spec.clusters, spec.dim)))
    rng = np.random.default_rng([spec.seed, shard])
    files = ShardFiles.in_dir(root, shard, layout)
    img, txt = vectors(spec, rng, centers)
    write_npy(files.img, img)
    write_npy(files.text, txt)
    files.meta.parent.mkdir(parents=True, exist_ok=True)
    tmp = files.meta.with_suffix(".parquet.tmp")
    pq.write_table(metadata(spec, shard, rng), tmp, row_group_size=max(1, spec.row_group_rows))
    tmp.replace(files.meta)
    return files
