"""Second half of the tutorial path: load the CSV into the table (here: chdb, the same engine ours uses)."""

from __future__ import annotations

import sys

from chdb import session

DDL = (
    "CREATE TABLE IF NOT EXISTS laion (id Int64, url String, caption String, NSFW String, similarity Float32, "
    "image_embedding Array(Float32), text_embedding Array(Float32)) ENGINE = MergeTree ORDER BY id"
)

if __name__ == "__main__":
    db, csv = sys.argv[1], sys.argv[2]
    s = session.Session(db)
    s.query(DDL)
    s.query(
        f"INSERT INTO laion SELECT * FROM file('{csv}', CSVWithNames, "
        "'id Int64, url String, caption String, NSFW String, similarity Float32, "
        "image_embedding Array(Float32), text_embedding Array(Float32)')"
    )
    s.close()
