"""ClickHouse's own expert path in chdb: INSERT ... SELECT from file(npy) PASTE JOIN file(npy) PASTE JOIN file(parquet).

max_threads=1 keeps the three files' rows aligned (PASTE JOIN zips blocks by position).
Also `ceiling`: INSERT of a pre-encoded RowBinary file, the engine's own upper bound.
"""

from __future__ import annotations

import sys

from chdb import session
from tutorial_load import DDL

STRIDE = 10_000_000


def paste_join(db: str, root: str, shard: int) -> None:
    s = session.Session(db)
    s.query(DDL)
    s.query(
        f"INSERT INTO laion SELECT toInt64({shard * STRIDE} + rowNumberInAllBlocks()) AS id, ifNull(m.url, ''), "
        "ifNull(m.caption, ''), ifNull(m.NSFW, ''), toFloat32(m.similarity), i.array, t.array "
        f"FROM file('{root}/img_emb/img_emb_{shard}.npy', Npy) AS i "
        f"PASTE JOIN file('{root}/text_emb/text_emb_{shard}.npy', Npy) AS t "
        f"PASTE JOIN file('{root}/metadata/metadata_{shard}.parquet', Parquet) AS m SETTINGS max_threads = 1"
    )
    s.close()


def ceiling(db: str, rowbinary: str) -> None:
    s = session.Session(db)
    s.query(DDL)
    s.query(f"INSERT INTO laion SELECT * FROM file('{rowbinary}', RowBinary, '{COLUMNS}')")
    s.close()


def export(db: str, table: str, out: str) -> None:
    """Write the loaded table as RowBinary (for the ceiling runs: same rows, pre-encoded)."""
    s = session.Session(db)
    s.query(f"SELECT * FROM {table} ORDER BY id INTO OUTFILE '{out}' TRUNCATE FORMAT RowBinary")
    s.close()


COLUMNS = (
    "id Int64, url String, caption String, NSFW String, similarity Float32, "
    "image_embedding Array(Float32), text_embedding Array(Float32)"
)

if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "paste":
        paste_join(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    elif mode == "ceiling":
        ceiling(sys.argv[2], sys.argv[3])
    elif mode == "export":
        export(sys.argv[2], sys.argv[3], sys.argv[4])
