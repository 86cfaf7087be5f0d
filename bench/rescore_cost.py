"""What rescoring costs and buys on a built index: recall@10 against brute force and p50 of indexed searches at
search lists, unrescored and rescored over multiples of k (`vector_search_with_rescoring`,
`vector_search_index_fetch_multiplier`). The evidence behind the tuner's rule that, without --max-memory,
rescored variants are weighed only when no unquantized structure fits (ingest/vector/tune.py, rescoring_wanted).

Run: python bench/rescore_cost.py --db DIR [--label TEXT] [--queries 50]

DIR is a chdb directory holding `default.laion` with a vector index on image_embedding, e.g. the growth bench's
first shard loaded by `laion-ingest run --shards 0 --target chdb:DIR` and indexed by `laion-ingest index --target
chdb:DIR --quantization bf16 --m 12 --ef-construction 24` (16 graphs). Query rows are drawn from the table by a
fixed hash; each setting is warmed with one search before its timed ones.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

LISTS = (256, 512, 1024, 2048, 4096)
RESCORED = [(size, mult) for size in (128, 256, 512) for mult in (1, 4, 16, 64)]


def main() -> None:
    from chdb import session

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--label", default="")
    ap.add_argument("--queries", type=int, default=50)
    args = ap.parse_args()
    s = session.Session(args.db)

    def rows(sql: str) -> list[list[object]]:
        return list(json.loads(s.query(sql, "JSONCompact").bytes())["data"])

    sample = f"SELECT id, image_embedding FROM default.laion WHERE cityHash64(id, 99) % 20000 = 3 LIMIT {args.queries}"
    lits = ["[" + ",".join(f"{float(x):.7g}" for x in r[1]) + "]" for r in rows(sample)]  # type: ignore[attr-defined]

    def top(lit: str, settings: str) -> tuple[list[int], float]:
        t = time.perf_counter()
        order = f"ORDER BY cosineDistance(image_embedding, {lit}) LIMIT 10"
        sql = f"SELECT id FROM default.laion {order} SETTINGS {settings}"
        got = [int(r[0]) for r in rows(sql)]  # type: ignore[call-overload]
        return got, time.perf_counter() - t

    truth = [top(lit, "use_skip_indexes=0")[0] for lit in lits]
    combos = [(size, 0, 0) for size in LISTS] + [(size, 1, mult) for size, mult in RESCORED]
    for size, rescore, mult in combos:
        settings = f"hnsw_candidate_list_size_for_search={size}, vector_search_with_rescoring={rescore}"
        settings += f", vector_search_index_fetch_multiplier={mult}" if mult > 1 else ""
        top(lits[0], settings)  # warm: the graphs load on the first search
        recalls, ms = [], []
        for lit, exact in zip(lits, truth, strict=True):
            got, seconds = top(lit, settings)
            recalls.append(len(set(got) & set(exact)) / 10)
            ms.append(seconds * 1000)
        print(
            f"{args.label}  L={size:<5} rescore={rescore} mult={mult:<3} recall@10 {np.mean(recalls):.3f}  "
            f"p50 {np.median(ms):7.1f} ms",
            flush=True,
        )
    s.close()


if __name__ == "__main__":
    main()
