"""The peer: LAION's own `embedding-reader` package + a few lines of pyarrow → chdb, one INSERT per batch.

Run: python bench/peer_embedding_reader.py DB_DIR SRC_ROOT SHARD [BATCH_ROWS]

What a LAION user writes by hand: one EmbeddingReader over img_emb with the metadata columns (parquet_npy), one
over text_emb, zipped by position (the package itself checks no row counts), each batch made an Arrow table and
inserted with `INSERT INTO laion SELECT * FROM Python(tbl)`. Same table, ids and null handling as ours.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
from chdb import session
from embedding_reader import EmbeddingReader
from tutorial_load import DDL

STRIDE = 10_000_000


def vectors(x: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.astype(np.float32, copy=False).ravel()), x.shape[1])


def one_shard_dirs(root: Path, shard: int, tmp: Path) -> tuple[Path, Path, Path]:
    """embedding-reader reads whole folders: link just this shard's three files into folders of their own."""
    out = []
    for sub, name in (
        ("img_emb", f"img_emb_{shard}.npy"),
        ("text_emb", f"text_emb_{shard}.npy"),
        ("metadata", f"metadata_{shard}.parquet"),
    ):
        (tmp / sub).mkdir()
        (tmp / sub / name).symlink_to((root / sub / name).resolve())
        out.append(tmp / sub)
    return out[0], out[1], out[2]


def load(db: str, root: Path, shard: int, batch_rows: int) -> None:
    s = session.Session(db)
    s.query(DDL)
    with tempfile.TemporaryDirectory(prefix="peer-") as tmp:
        img_dir, txt_dir, meta_dir = one_shard_dirs(root, shard, Path(tmp))
        cols = ["url", "caption", "NSFW", "similarity"]
        img = EmbeddingReader(str(img_dir), file_format="parquet_npy", metadata_folder=str(meta_dir), meta_columns=cols)
        txt = EmbeddingReader(str(txt_dir), file_format="npy")
        start = shard * STRIDE
        batches = zip(img(batch_rows, show_progress=False), txt(batch_rows, show_progress=False), strict=True)
        for (img_vec, meta), (txt_vec, _) in batches:
            n = len(img_vec)
            tbl = pa.table(  # noqa: F841 - read by name by chdb's Python() table function
                {
                    "id": pa.array(np.arange(start, start + n, dtype=np.int64)),
                    "url": pa.array(meta["url"].fillna("").astype(str), pa.string()),
                    "caption": pa.array(meta["caption"].fillna("").astype(str), pa.string()),
                    "NSFW": pa.array(meta["NSFW"].fillna("").astype(str), pa.string()),
                    "similarity": pa.array(meta["similarity"].to_numpy(np.float32)),
                    "image_embedding": vectors(img_vec),
                    "text_embedding": vectors(txt_vec),
                }
            )
            s.query("INSERT INTO laion SELECT * FROM Python(tbl)")
            start += n
    s.close()


if __name__ == "__main__":
    load(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 8192)
