"""The vector commands against a real ClickHouse 26.9 server over HTTP: `index` (given and tuned parameters, the
full-index check, the recorded search list), `search`, `eval`, and the daemon's `--index-every` on a growing
table. 18.16 has none of it (its one-line refusals are in test_vector.py); each test says so as its skip reason.

Small sizes (2 cores): 2 × 6,000 rows in 1,500-row segments (8 parts), M=16/ef_construction=64 where given.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from cli_run import cli, ok
from daemon_proc import DONE, DaemonProc
from http_capture import Capture
from server_fixtures import NO_VECTOR_1816, servers_with
from test_vector import cosine_distances, source_vectors

from ingest.stages.synth import SynthSpec, write_shard

ROWS = 6000
STRIDE = 10_000_000
ONLY_26 = servers_with({"18.16": NO_VECTOR_1816})


@dataclass
class Table:
    server: Any
    db: str
    src: Path

    @property
    def env(self) -> dict[str, str]:
        return {"CLICKHOUSE_USER": "ingest", "CLICKHOUSE_PASSWORD": self.server.password}

    @property
    def load_flags(self) -> tuple[str, ...]:
        """The run's and the daemon's: one ledger, kept with the source."""
        return ("--segment-rows", "1500", "--state", str(self.src.parent / f"{self.db}.ledger.json"))

    def cmd(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        return cli(command, "--target", self.server.http_url, "--database", self.db, *args, env=self.env)

    def rows(self, sql: str) -> list[dict[str, Any]]:
        return [orjson.loads(x) for x in self.server.query(sql + " FORMAT JSONEachRow").splitlines()]

    def parts(self) -> list[dict[str, Any]]:
        return self.rows(
            "SELECT name, rows, secondary_indices_compressed_bytes AS b FROM system.parts "
            f"WHERE active AND database = '{self.db}' AND table = 'laion'"
        )


def load(server: Any, db: str, src: Path, shards: str = "0-1", seed: int = 11) -> Table:
    for s in range(int(shards[0]), int(shards[-1]) + 1):
        if not (src / "img_emb" / f"img_emb_{s}.npy").exists():
            write_shard(src, s, SynthSpec(rows=ROWS, seed=seed))
    t = Table(server, db, src)
    ok(t.cmd("run", "--source", str(src), "--shards", shards, *t.load_flags, "--no-progress"))
    return t


@pytest.mark.server
@pytest.mark.parametrize("server", ONLY_26, indirect=True)
def test_given_parameters_build_search_and_eval_over_http(server: Any, server_db: str, tmp_path: Path) -> None:
    t = load(server, server_db, tmp_path / "src")
    out = ok(t.cmd("index", "--m", "16", "--ef-construction", "64", "--no-progress"))
    assert re.search(
        r"image_index: built vector_similarity\('hnsw', 'cosineDistance', 512, 'bf16', 16, 64\).* "
        r"on image_embedding over 12,000 rows",
        out,
    ), out
    ix = t.rows(f"SELECT name, type_full FROM system.data_skipping_indices WHERE database = '{server_db}'")
    hnsw = "vector_similarity('hnsw', 'cosineDistance', 512, 'bf16', 16, 64)"
    assert ix == [{"name": "image_index", "type_full": hnsw}]
    assert all(int(p["b"]) > 0 for p in t.parts()), t.parts()

    row = STRIDE + 123
    doc = orjson.loads(ok(t.cmd("search", "--like-id", str(row), "--limit", "5", "--json")))
    assert doc["index_used"] is True and doc["index"] == "image_index"
    assert doc["hits"][0]["id"] == row and abs(doc["hits"][0]["distance"]) < 1e-5
    ids, vecs = source_vectors(t.src, (0, 1))
    dist = cosine_distances(vecs, vecs[ROWS + 123])
    kth = np.sort(dist)[4]
    by_id = dict(zip(ids.tolist(), dist.tolist(), strict=True))
    assert all(by_id[h["id"]] <= kth + 1e-5 for h in doc["hits"]), doc["hits"]

    brute = orjson.loads(ok(t.cmd("search", "--like-id", "4321", "--limit", "10", "--brute-force", "--json")))
    exact = ids[np.argsort(cosine_distances(vecs, vecs[4321]), kind="stable")[:10]].tolist()
    assert brute["index_used"] is False and {h["id"] for h in brute["hits"]} == set(exact)

    out = ok(t.cmd("eval", "--queries", "40", "--k", "10", "--seed", "3"))
    m = re.search(r"^recall@10: (\d\.\d+)$", out, re.M)
    assert m and float(m.group(1)) >= 0.9, out
    assert re.search(r"median latency: index \d+\.\d ms, brute force \d+\.\d ms", out), out


@pytest.mark.server
@pytest.mark.parametrize("server", ONLY_26, indirect=True)
def test_tuned_index_is_checked_in_full_and_its_list_recorded_over_http(
    server: Any, server_db: str, tmp_path: Path
) -> None:
    t = load(server, server_db, tmp_path / "src")
    out = ok(t.cmd("index", "--recall-target", "0.95", "--max-graphs", "4", "--sample-rows", "4000", "--no-progress"))
    # the server merges in the background too: 8 parts or fewer by now, merged first unless one is left
    said = r"laion: \d+ parts?(: merged first, one part per partition|, one per partition: built as it is)"
    assert re.search(said, out), out
    m = re.search(r"recall@10 (\d\.\d+) on the full index at hnsw_candidate_list_size_for_search=(\d+)", out)
    assert m and float(m.group(1)) >= 0.95, out
    listed = int(m.group(2))
    assert all(int(p["b"]) > 0 for p in t.parts()), t.parts()
    assert t.rows(f"SELECT name FROM system.tables WHERE database = '{server_db}' AND name LIKE '_laion_tune%'") == []

    doc = orjson.loads(ok(t.cmd("eval", "--queries", "40", "--seed", "5", "--json")))
    assert doc["hnsw_candidate_list_size_for_search"] == listed
    assert doc["search_list_source"].startswith("recorded when tuned") and doc["recall_at_10"] >= 0.9
    hit = orjson.loads(ok(t.cmd("search", "--like-id", "7", "--json", "--limit", "3")))
    assert hit["settings"]["hnsw_candidate_list_size_for_search"] == listed and hit["index_used"] is True
    again = ok(t.cmd("index", "--sample-rows", "4000", "--no-progress"))
    assert "exists already" in again and "candidates on" not in again


@pytest.mark.server
@pytest.mark.parametrize("server", ONLY_26, indirect=True)
def test_daemon_indexes_new_parts_and_a_merge_does_not_rebuild_over_http(
    server: Any,
    server_db: str,
    tmp_path: Path,
    daemons: Callable[..., DaemonProc],
) -> None:
    """The daemon turns `materialize_skip_indexes_on_merge` off, loads new shards (their parts land without the
    index) and builds the index on them; a merge then leaves its part uncovered (no graph rebuilt inside the
    merge) and the daemon's next pass covers it."""
    src = tmp_path / "src"
    t = load(server, server_db, src, shards="0")
    ok(t.cmd("index", "--m", "16", "--ef-construction", "64", "--no-progress"))
    for s in (1, 2):
        write_shard(src, s, SynthSpec(rows=ROWS, seed=11))
    flags = ("--database", server_db, *t.load_flags, "--index-every", "1")
    built = "laion_ingest_index_rematerializations_total"
    covered = "laion_ingest_index_uncovered_parts"

    def start(url: str) -> DaemonProc:
        return daemons(tmp_path, src, url, *flags, env=t.env)

    with Capture(server.http_port) as cap:
        d = start(cap.url)
        m = d.wait_for(
            "new shards loaded and covered",
            lambda m: m.get(DONE) == 2 and m.get(built, 0) >= 1 and m.get(covered) == 0,
        )
        assert m["laion_ingest_index_rows_built_total"] >= 1500  # (background merges decide how many rows, exactly)
        assert d.terminate() == 0
        sent = cap.requests(body_bytes=300)
    # merges are turned off building the index before the first insert (a merge during the load would build it)
    first_insert = next(i for i, r in enumerate(sent) if r.is_insert)
    setting = [i for i, r in enumerate(sent) if b"MODIFY SETTING materialize_skip_indexes_on_merge = 0" in r.body_start]
    assert setting and setting[0] < first_insert, [r.body_start[:60] for r in sent[: first_insert + 1]]
    create = t.rows(
        f"SELECT create_table_query AS q FROM system.tables WHERE database = '{server_db}' AND name = 'laion'"
    )
    assert "materialize_skip_indexes_on_merge = 0" in create[0]["q"]
    parts = t.parts()
    assert sum(int(p["rows"]) for p in parts) == 3 * ROWS and all(int(p["b"]) > 0 for p in parts), parts

    server.query(f"OPTIMIZE TABLE {server_db}.laion FINAL")
    merged = t.parts()
    assert len(merged) == 1 and int(merged[0]["b"]) == 0, merged  # the merge built no graph

    d = start(server.http_url)
    d.wait_for("the merged part covered", lambda m: m.get(built, 0) >= 1 and m.get(covered) == 0)
    assert d.terminate() == 0
    final = t.parts()
    assert len(final) == 1 and int(final[0]["b"]) > 0, final
    doc = orjson.loads(ok(t.cmd("search", "--like-id", str(2 * STRIDE + 5), "--json", "--limit", "3")))
    assert doc["index_used"] is True and doc["hits"][0]["id"] == 2 * STRIDE + 5
