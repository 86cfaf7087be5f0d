"""Why serve reads exact similarities by id instead of `vector_search_with_rescoring`: both, side by side.

On the serve bench's table (run bench/serve_bench.py --work DIR first), for a few stored rows as queries, k = 40 and
1000: (a) the index query (no rescoring, no vector column) then the hits' stored vectors and exact distances read by
primary key (`WHERE id IN (…)`), what serve does; (b) the same index query with `vector_search_with_rescoring = 1`,
what it did before. Prints wall time and the bytes ClickHouse deserialized (`X-ClickHouse-Summary`), and how many
ids (b) shares with (a).

Run alone: python bench/serve_exact.py --work DIR [--queries 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from chdb_server import start_ch26  # noqa: E402

from ingest.clickhouse.knn_sql import exact_sql  # noqa: E402
from ingest.clickhouse.vector_sql import vector_literal  # noqa: E402
from ingest.core.ids import TableRef  # noqa: E402

DB = "bench"


def query(url: str, sql: str, **settings: int) -> tuple[list[list[Any]], float, int]:
    """Rows, wall milliseconds, bytes read."""
    params = urllib.parse.urlencode({"user": "default", **settings})
    start = time.perf_counter()
    req = urllib.request.Request(f"{url}/?{params}", data=(sql + " FORMAT JSONCompactEachRow").encode())
    with urllib.request.urlopen(req, timeout=600) as resp:
        body = resp.read().decode()
        summary = json.loads(resp.headers.get("X-ClickHouse-Summary", "{}"))
    ms = (time.perf_counter() - start) * 1000
    return [json.loads(line) for line in body.splitlines()], ms, int(summary.get("read_bytes", 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="serve_bench.py's work dir (loaded, indexed)")
    ap.add_argument("--queries", type=int, default=3)
    args = ap.parse_args()
    server = start_ch26(args.work / "ch", password="")
    try:
        run(server.http_url, args.queries)
    finally:
        server.stop()


def run(url: str, queries: int) -> None:
    n = int(query(url, f"SELECT count() FROM {DB}.laion")[0][0][0])
    sample, _, _ = query(url, f"SELECT image_embedding FROM {DB}.laion WHERE cityHash64(id) % 4999 = 0 LIMIT {queries}")
    print(f"serve exact similarity: {n:,} rows, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        "| LIMIT | query | index query ms | MiB | by id (exact + vectors) ms | MiB | rescoring=1 ms | MiB | same ids |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for limit in (40, 1000):
        for i, (vec,) in enumerate(sample):
            lit = vector_literal([float(x) for x in vec])
            knn = (
                f"SELECT id, url, caption, NSFW, cosineDistance(image_embedding, {lit}) AS distance "
                f"FROM {DB}.laion ORDER BY distance ASC LIMIT {limit}"
            )
            hits, ms1, b1 = query(url, knn)
            exact = exact_sql(TableRef(DB, "laion"), "image_embedding", lit, [int(r[0]) for r in hits], True)
            _, ms2, b2 = query(url, exact)
            rescored, ms3, b3 = query(url, knn, vector_search_with_rescoring=1)
            same = len({r[0] for r in rescored} & {r[0] for r in hits})
            print(
                f"| {limit} | {i} | {ms1:.0f} | {b1 / 2**20:.0f} | {ms2:.0f} | {b2 / 2**20:.0f} | {ms3:.0f} | "
                f"{b3 / 2**20:.0f} | {same}/{limit} |"
            )


if __name__ == "__main__":
    main()
