"""The peer our users would pick: ClickHouse's official Python client, clickhouse-connect, in about 20 lines.

Run: python bench/peer_clickhouse_connect.py URL DATABASE SRC_ROOT SHARDS [BATCH_ROWS]   (SHARDS: 0 or 0,1,...)

What a competent user writes: both npy files memory-mapped, the parquet read with pyarrow in ~100k-row batches,
float16 widened to the table's Float32, one `insert_arrow` per batch (the client's defaults: its own LZ4 Arrow
compression), a timeout long enough for a bulk load on a busy machine.
Same table, ids (shard × 10,000,000 + row) and nulls-as-'' as ours.
"""

from __future__ import annotations

import sys
from urllib.parse import urlsplit

import clickhouse_connect
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from clickhouse_connect.driver.client import Client

STRIDE = 10_000_000
TIMEOUTS = {"connect_timeout": 1800, "send_receive_timeout": 1800}
"""urllib3 keeps the connect timeout (default 10 s) on the socket while the body is sent: a busy server that
stops reading for 10 s cut the load here."""


def vectors(x: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(x.astype(np.float32).ravel(), x.shape[1])


def load(client: Client, root: str, shard: int, batch_rows: int) -> None:
    img = np.load(f"{root}/img_emb/img_emb_{shard}.npy", mmap_mode="r")
    txt = np.load(f"{root}/text_emb/text_emb_{shard}.npy", mmap_mode="r")
    meta = pq.ParquetFile(f"{root}/metadata/metadata_{shard}.parquet")
    start = 0
    for batch in meta.iter_batches(batch_size=batch_rows, columns=["url", "caption", "NSFW", "similarity"]):
        n, first = batch.num_rows, shard * STRIDE + start
        table = pa.table(
            {
                "id": np.arange(first, first + n, dtype=np.int64),
                "url": pc.fill_null(batch["url"], ""),
                "caption": pc.fill_null(batch["caption"], ""),
                "NSFW": pc.fill_null(batch["NSFW"], ""),
                "similarity": pc.cast(batch["similarity"], pa.float32()),
                "image_embedding": vectors(img[start : start + n]),
                "text_embedding": vectors(txt[start : start + n]),
            }
        )
        client.insert_arrow("laion", table)
        start += n


def main(url: str, database: str, root: str, shards: str, batch_rows: int) -> None:
    u = urlsplit(url)
    client = clickhouse_connect.get_client(host=u.hostname, port=u.port, database=database, **TIMEOUTS)
    for shard in shards.split(","):  # shard after shard, as a loop over LAION's files would
        load(client, root, int(shard), batch_rows)
    client.close()


if __name__ == "__main__":
    main(*sys.argv[1:5], int(sys.argv[5]) if len(sys.argv) > 5 else 100_000)
