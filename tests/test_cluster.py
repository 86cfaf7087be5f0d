"""`--cluster`: two real clickhouse-server 18.16 nodes as a 2-shard cluster, Distributed table over local tables.

Node A listens on 127.0.0.1, node B on 127.0.0.2 (loopback too), both on the SAME HTTP port, as production nodes
serve HTTP on one port: the sink reaches every node at the target's port and the node's host from system.clusters.
Each node has its own TCP port, so neither mistakes the other for itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cli_run import cli
from exact import assert_table_equals, expected_rows, server_table
from server_fixtures import ServerHandle, free_ports, start_clickhouse

from ingest.clickhouse import cluster_sql as csql
from ingest.core.ids import TableRef
from ingest.core.plan import plan_batches
from ingest.sinks.cluster import placement

ROWS = 1500
SHARDS = [0, 1, 2, 3]
BATCH = 400


@dataclass
class Cluster:
    a: ServerHandle
    b: ServerHandle

    @property
    def nodes(self) -> tuple[ServerHandle, ServerHandle]:
        return self.a, self.b

    def env(self) -> dict[str, str]:
        return {"CLICKHOUSE_USER": self.a.user, "CLICKHOUSE_PASSWORD": self.a.password}


def remote_servers(tcp_a: int, tcp_b: int) -> str:
    def replica(host: str, port: int) -> str:
        return f"<replica><host>{host}</host><port>{port}</port></replica>"

    return (
        "<remote_servers>"
        f"<two><shard>{replica('127.0.0.1', tcp_a)}</shard><shard>{replica('127.0.0.2', tcp_b)}</shard></two>"
        f"<mirrored><shard>{replica('127.0.0.1', tcp_a)}{replica('127.0.0.2', tcp_b)}</shard></mirrored>"
        f"<broken><shard>{replica('127.0.0.1', tcp_a)}</shard><shard>{replica('127.0.0.3', tcp_b)}</shard></broken>"
        "</remote_servers>"
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    http, tcp_a, tcp_b, inter_a, inter_b = free_ports(5)
    xml = remote_servers(tcp_a, tcp_b)
    a = start_clickhouse(root / "a", xml, password="pw-cluster", host="127.0.0.1", ports=(http, tcp_a, inter_a))
    try:
        b = start_clickhouse(root / "b", xml, password="pw-cluster", host="127.0.0.2", ports=(http, tcp_b, inter_b))
    except BaseException:
        a.stop()
        raise
    try:
        yield Cluster(a, b)
    finally:
        with ThreadPoolExecutor(2) as pool:  # an 18.16 shutdown takes seconds: stop both at once
            list(pool.map(ServerHandle.stop, (a, b)))
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def db(cluster: Cluster) -> Iterator[str]:
    name = f"c_{np.random.default_rng().integers(1 << 40):x}"
    yield name
    for node in cluster.nodes:
        node.query(f"DROP DATABASE IF EXISTS {name}")


def run_cluster(cluster: Cluster, src: Path, db: str, state: Path, *extra: str) -> tuple[int, str, str]:
    shards = f"{SHARDS[0]}-{SHARDS[-1]}"
    res = cli(
        "run",
        *("--source", str(src), "--shards", shards, "--dim", "64", "--batch-rows", str(BATCH)),
        *("--segment-rows", str(BATCH)),  # a segment per batch: the placement checks below cut by BATCH
        *("--target", cluster.a.http_url, "--database", db, "--state", str(state), "--no-progress"),
        *extra,
        env=cluster.env(),
    )
    return res.returncode, res.stdout, res.stderr


def bytes_per_row(summary: str) -> int:
    m = re.search(r"([\d,]+) bytes/row sent", summary)
    assert m, summary
    return int(m.group(1).replace(",", ""))


def local_ids(node: ServerHandle, db: str) -> np.ndarray:
    raw = node.query(f"SELECT id FROM {db}.laion_local ORDER BY id FORMAT RowBinary")
    return np.frombuffer(raw, dtype="<i8")


def assert_spread(cluster: Cluster, db: str, total: int) -> tuple[np.ndarray, np.ndarray]:
    """Each node's local table holds a nonempty part; the parts are disjoint and add up to the total."""
    ids_a, ids_b = (local_ids(n, db) for n in cluster.nodes)
    assert len(ids_a) > 0 and len(ids_b) > 0, (len(ids_a), len(ids_b))
    assert len(ids_a) + len(ids_b) == total
    assert len(np.intersect1d(ids_a, ids_b)) == 0
    return ids_a, ids_b


def test_loopback_alias_serves_the_second_node(cluster: Cluster) -> None:
    assert cluster.a.http_port == cluster.b.http_port
    assert cluster.b.http_url.startswith("http://127.0.0.2:")
    for node in cluster.nodes:
        assert node.query("SELECT count() FROM system.clusters WHERE cluster = 'two'").strip() == b"2"


def test_distributed_insert_lands_exactly_across_both_nodes(
    cluster: Cluster,
    db: str,
    make_shards,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    src = make_shards(SHARDS, rows=ROWS, dim=64)
    code, out, err = run_cluster(cluster, src, db, tmp_path / "ledger.json", "--cluster", "two")
    assert code == 0, err
    assert f"cluster two has no ZooKeeper/Keeper: {db}.laion_local is a plain MergeTree on each node" in err
    total = ROWS * len(SHARDS)
    assert f"{total:,} rows inserted" in out
    assert bytes_per_row(out) > 2 * 64 * 4  # the bodies sent through the entry are counted (two 64-d Float32 arrays)
    want = expected_rows(src, SHARDS)
    assert_table_equals(server_table(cluster.a, db), want)  # db.laion on the entry is the Distributed table
    assert_table_equals(server_table(cluster.b, db), want)  # and node B has one too
    assert_spread(cluster, db, total)
    engines = cluster.b.query(f"SELECT name, engine FROM system.tables WHERE database = '{db}' ORDER BY name")
    assert engines.decode().split("\n")[:2] == ["laion\tDistributed", "laion_local\tMergeTree"]

    # a rerun with the ledger skips everything; one without it reconciles through the Distributed table
    code, out, err = run_cluster(cluster, src, db, tmp_path / "ledger.json", "--cluster", "two")
    assert code == 0, err
    assert "0 rows inserted" in out
    code, out, err = run_cluster(cluster, src, db, tmp_path / "fresh-ledger.json", "--cluster", "two")
    assert code == 0, err
    assert "0 rows inserted" in out and f"{total:,} rows already present" in out
    assert_table_equals(server_table(cluster.a, db), want)


def test_local_insert_mode_places_each_batch_on_its_node(
    cluster: Cluster,
    db: str,
    make_shards,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    src = make_shards(SHARDS, rows=ROWS, dim=64)
    code, out, err = run_cluster(
        cluster, src, db, tmp_path / "ledger.json", "--cluster", "two", "--insert-mode", "local"
    )
    assert code == 0, err
    total = ROWS * len(SHARDS)
    assert f"{total:,} rows inserted" in out
    assert bytes_per_row(out) > 2 * 64 * 4  # counted on the node sinks the segments went to
    assert_table_equals(server_table(cluster.a, db), expected_rows(src, SHARDS))
    ids_a, ids_b = assert_spread(cluster, db, total)
    # the documented placement: whole batches, on the node `placement` names (shard 1 = node A, 2 = node B)
    for shard in SHARDS:
        for plan in plan_batches(shard, ROWS, BATCH):
            batch_ids = np.arange(plan.first_id, plan.last_id + 1)
            home = ids_a if placement(shard, plan.index, [1, 1]) == 0 else ids_b
            assert np.isin(batch_ids, home).all(), (shard, plan.index)

    code, out, err = run_cluster(
        cluster, src, db, tmp_path / "fresh-ledger.json", "--cluster", "two", "--insert-mode", "local"
    )
    assert code == 0, err
    assert f"{total:,} rows already present" in out
    assert len(local_ids(cluster.a, db)) + len(local_ids(cluster.b, db)) == total


def test_stray_and_missing_rows_on_any_node_are_replaced(
    cluster: Cluster,
    db: str,
    make_shards,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """A batch with extra copies on node B and a batch missing rows on node A: the delete reaches every node."""
    src = make_shards(SHARDS, rows=ROWS, dim=64)
    code, _out, err = run_cluster(cluster, src, db, tmp_path / "ledger.json", "--cluster", "two")
    assert code == 0, err
    dup = plan_batches(1, ROWS, BATCH)[1]
    cluster.b.query(
        f"INSERT INTO {db}.laion_local SELECT * FROM {db}.laion WHERE id BETWEEN {dup.first_id} AND {dup.first_id + 9}"
    )
    gap = plan_batches(2, ROWS, BATCH)[0]
    a_ids = local_ids(cluster.a, db)
    victims = a_ids[(a_ids >= gap.first_id) & (a_ids <= gap.last_id)][:5]
    assert len(victims) == 5
    cluster.a.query(f"ALTER TABLE {db}.laion_local DELETE WHERE id IN ({', '.join(map(str, victims))})")
    total = ROWS * len(SHARDS)

    code, _out, err = run_cluster(cluster, src, db, tmp_path / "fresh-ledger.json", "--cluster", "two")
    assert code == 0, err
    assert "replacing the range" in err
    assert_table_equals(server_table(cluster.a, db), expected_rows(src, SHARDS))
    assert_spread(cluster, db, total)


def test_kill_9_mid_run_then_rerun_is_exact(
    cluster: Cluster,
    db: str,
    make_shards,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """SIGKILL while batches are in flight through the Distributed table; the rerun reconciles to exact."""
    shards = [0, 1, 2, 3]
    rows = 20_000
    src = make_shards(shards, rows=rows, dim=64)
    total = rows * len(shards)
    args = [
        *("run", "--source", str(src), "--shards", "0-3", "--dim", "64", "--batch-rows", "250"),
        *("--target", cluster.a.http_url, "--database", db, "--state", str(tmp_path / "ledger.json")),
        *("--no-progress", "--cluster", "two"),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **cluster.env()},
    )
    try:
        seen = 0
        while proc.poll() is None and seen == 0:
            with contextlib.suppress(RuntimeError):  # the table may not exist yet
                seen = int(cluster.a.query(f"SELECT count() FROM {db}.laion"))
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 0 < int(cluster.a.query(f"SELECT count() FROM {db}.laion")) < total

    res = cli(*args, env=cluster.env())
    assert res.returncode == 0, res.stderr
    assert_table_equals(server_table(cluster.a, db), expected_rows(src, shards))
    assert_spread(cluster, db, total)


def test_unknown_cluster_is_one_line(cluster: Cluster, db: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    code, _out, err = run_cluster(cluster, src, db, tmp_path / "ledger.json", "--cluster", "nope")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "cluster 'nope' is not defined" in lines[0] and "two" in lines[0]
    assert "Traceback" not in err


def test_unreachable_node_is_named(cluster: Cluster, db: str, tmp_path: Path) -> None:
    """127.0.0.3 runs no server: the error names the node and the port it was reached at, not the password."""
    src = tmp_path / "src"
    src.mkdir()
    code, _out, err = run_cluster(cluster, src, db, tmp_path / "ledger.json", "--cluster", "broken")
    assert code == 4, err
    last = err.strip().splitlines()[-1]
    assert "node 127.0.0.3 (shard 2)" in last and f"127.0.0.3:{cluster.a.http_port}" in last
    assert cluster.a.password not in err


def test_local_mode_refuses_replicated_shards(cluster: Cluster, db: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    code, _out, err = run_cluster(
        cluster, src, db, tmp_path / "ledger.json", "--cluster", "mirrored", "--insert-mode", "local"
    )
    assert code == 2
    assert err.strip().splitlines() == [
        "error: --insert-mode local needs one replica per shard; cluster 'mirrored' shard 1 has more "
        "(use --insert-mode distributed)"
    ]


def test_existing_plain_table_is_not_taken_for_the_distributed_one(cluster: Cluster, db: str, tmp_path: Path) -> None:
    cols = "id Int64, url String, caption String, NSFW String, similarity Float32, "
    cols += "image_embedding Array(Float32), text_embedding Array(Float32)"
    cluster.b.query(f"CREATE DATABASE {db}")
    cluster.b.query(f"CREATE TABLE {db}.laion ({cols}) ENGINE = MergeTree ORDER BY id")
    src = tmp_path / "src"
    src.mkdir()
    code, _out, err = run_cluster(cluster, src, db, tmp_path / "ledger.json", "--cluster", "two")
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert f"127.0.0.2:{cluster.b.http_port}" in last
    assert f"table {db}.laion has engine MergeTree; --cluster needs it Distributed over {db}.laion_local" in last


def test_chdb_target_with_cluster_is_refused(tmp_path: Path) -> None:
    res = cli("run", "--source", str(tmp_path), "--target", f"chdb:{tmp_path / 'db'}", "--cluster", "two")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: --cluster needs an http(s):// ClickHouse target (chdb is a single embedded node)"
    ]


def test_on_cluster_ddl_parses_on_18_16(cluster: Cluster) -> None:
    """18.16 without ZooKeeper refuses ON CLUSTER after parsing it (code 49), never as a syntax error (62)."""
    ref = TableRef("ddl_probe", "laion")
    for sql in (
        csql.create_database_on_cluster_sql(ref.database, "two"),
        csql.local_table_sql(csql.local_ref(ref), None, "two"),
        csql.distributed_table_sql(ref, "two", on_cluster=True),
    ):
        with pytest.raises(RuntimeError, match=r"Code: 49\b.*DDL background thread"):
            cluster.a.query(sql)
