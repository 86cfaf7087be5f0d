"""The ClickHouse LAION tutorial's process.py, reproduced as our baseline (do not optimise this file).

Per shard: np.load both npy files whole, pd.read_parquet the metadata, concatenate the embeddings as columns,
keep url/caption/NSFW/similarity + embeddings, turn each embedding into a Python list per row, replace quotes in
captions with spaces, and write a CSV whose pandas index becomes the id (0..N-1 again in every shard).
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd

# The tutorial predates numpy 2, whose scalar repr is "np.float16(0.1)": print lists the way numpy 1 did.
np.set_printoptions(legacy="1.25")


def process(img_path: str, txt_path: str, meta_path: str, out_csv: str) -> None:
    im_emb = np.load(img_path)
    text_emb = np.load(txt_path)
    data = pd.read_parquet(meta_path)
    data = pd.concat(
        [data, pd.DataFrame({"image_embedding": [*im_emb]}), pd.DataFrame({"text_embedding": [*text_emb]})], axis=1
    )
    data = data[["url", "caption", "NSFW", "similarity", "image_embedding", "text_embedding"]]
    data["image_embedding"] = data["image_embedding"].apply(lambda x: list(x))
    data["text_embedding"] = data["text_embedding"].apply(lambda x: list(x))
    data = data.fillna("")
    data["caption"] = data["caption"].apply(lambda x: x.replace("'", " ").replace('"', " "))
    data.to_csv(out_csv)


if __name__ == "__main__":
    process(*sys.argv[1:5])
