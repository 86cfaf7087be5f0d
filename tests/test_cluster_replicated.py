"""A replicated cluster: ZooKeeper + 2 shards × 2 replicas of real 18.16 servers, all on 127.0.0.1 with distinct
ports, so every member is named with `--node HOST:TCP_PORT=URL`.

One module-scoped cluster (four servers and a JVM take memory and seconds); few tests use it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cli_run import cli
from cluster_fixtures import CLUSTER, ReplicatedCluster, start_replicated_cluster
from exact import assert_table_equals, expected_rows, server_table
from server_fixtures import ServerHandle

from ingest.core.plan import plan_batches

ROWS = 12_000
SHARDS = [0, 1, 2, 3]
BATCH = 500


@pytest.fixture(scope="module")
def repl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicatedCluster]:
    cluster = start_replicated_cluster(tmp_path_factory.mktemp("repl"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def db(repl: ReplicatedCluster) -> Iterator[str]:
    name = f"r_{np.random.default_rng().integers(1 << 40):x}"
    yield name
    for node in repl.nodes:
        if not node.running:
            node.start()
    with contextlib.suppress(RuntimeError):
        repl.entry.query(f"DROP DATABASE IF EXISTS {name} ON CLUSTER {CLUSTER}")


def run_args(repl: ReplicatedCluster, src: Path, db: str, state: Path, *extra: str) -> list[str]:
    return [
        *("run", "--source", str(src), "--shards", "0-3", "--dim", "32", "--batch-rows", str(BATCH)),
        *("--target", repl.entry.http_url, "--database", db, "--state", str(state), "--no-progress"),
        *("--cluster", CLUSTER, *repl.node_flags(), "--max-retries", "20", "--retry-max-seconds", "2"),
        *extra,
    ]


def local_table(node: ServerHandle, db: str) -> object:
    return server_table(node, db, "laion_local")


def replica_lag(node: ServerHandle, db: str) -> str | None:
    """Why this replica of `{db}.laion_local` has not caught up yet, or None once it has.

    On 18.16 `system.replicas` and SYSTEM SYNC REPLICA cannot tell: a replica restarted within its killed
    predecessor's ZooKeeper session finds that session's `is_active` node, leaves replication unstarted (it
    retries ~10 s later) and meanwhile reports is_readonly 0 and queue_size 0 (its queue, kept in ZooKeeper, is not
    loaded), and SYNC REPLICA returns at once. So ZooKeeper is asked: `is_active` names this server's pid
    (replication runs here), the replica's queue there is empty, and it has read the replication log to the end.
    """
    row = node.query(
        "SELECT zookeeper_path, replica_path, queue_size, parts_to_check, log_pointer, log_max_index "
        f"FROM system.replicas WHERE database = '{db}' AND table = 'laion_local' FORMAT TSV"
    ).decode()
    if not row.strip():
        return "no replicated table"
    zk_path, path, queue_size, to_check, pointer, max_index = row.rstrip("\n").split("\t")
    zk = node.query(
        "SELECT name, value, numChildren FROM system.zookeeper "
        f"WHERE path = '{path}' AND name IN ('is_active', 'queue') FORMAT TSV"
    ).decode()
    nodes = {name: (value, int(children)) for name, value, children in (ln.split("\t") for ln in zk.splitlines())}
    log = node.query(f"SELECT numChildren FROM system.zookeeper WHERE path = '{zk_path}' AND name = 'log'").strip()
    if not nodes.get("is_active", ("", 0))[0].startswith(f"pid: {node.pid},"):
        return f"replication not started (is_active: {nodes.get('is_active', ('none', 0))[0]!r})"
    if int(log) > 0 and int(pointer or 0) <= int(max_index):
        return f"log read to {pointer or 0} of {max_index}"
    if nodes["queue"][1] or int(queue_size) or int(to_check):
        return f"queue: {nodes['queue'][1]} in ZooKeeper, {queue_size} loaded, {to_check} parts to check"
    return None


def sync_replicas(repl: ReplicatedCluster, db: str, timeout: float = 120.0) -> None:
    """Every replica runs replication, has read the whole log and worked off its queue: it has fetched what the
    others have, and a replica back from a kill has applied the deletes issued while it was down. 18.16's
    `system.mutations.is_done` can stay 0 after a restart although the parts are mutated, so the queue, not that
    flag, is waited for (see `replica_lag` for why not SYSTEM SYNC REPLICA)."""
    deadline = time.monotonic() + timeout
    while lag := {n.tcp_port: why for n in repl.nodes if (why := replica_lag(n, db)) is not None}:
        if time.monotonic() > deadline:
            errors = (
                "SELECT replica_name, type, new_part_name, num_tries, last_exception FROM system.replication_queue "
                f"WHERE database = '{db}' FORMAT TSV"
            )
            raise AssertionError(
                f"replicas did not catch up: {lag}\n" + b"".join(n.query(errors) for n in repl.nodes).decode()
            )
        time.sleep(0.2)


def dump_duplicates(repl: ReplicatedCluster, db: str) -> str:
    sql = (
        f"SELECT id, count() AS c, groupArray(_part) FROM {db}.laion_local GROUP BY id HAVING c > 1 "
        "ORDER BY id LIMIT 3 FORMAT TSV"
    )
    muts = (
        "SELECT mutation_id, command, block_numbers.number, parts_to_do, is_done FROM system.mutations "
        f"WHERE database = '{db}' FORMAT TSV"
    )
    return "\n".join(f"{n.tcp_port}: {n.query(sql).decode()} | {n.query(muts).decode()}" for n in repl.nodes)


def assert_replicas_equal_and_exact(repl: ReplicatedCluster, db: str, src: Path) -> None:
    """Replicas of a shard hold the same rows; shards are disjoint; the Distributed table equals the source."""
    sync_replicas(repl, db)
    want = expected_rows(src, SHARDS)
    got = server_table(repl.entry, db)
    assert got.num_rows == len(want["id"]), dump_duplicates(repl, db)
    assert_table_equals(got, want)
    shard_ids = []
    parts = f"SELECT name, rows FROM system.parts WHERE database = '{db}' AND active ORDER BY name"
    for r1, r2 in repl.grid:
        a, b = local_table(r1, db), local_table(r2, db)
        assert a.equals(b), (  # type: ignore[attr-defined]
            r1.tcp_port,
            r2.tcp_port,
            a.num_rows,
            b.num_rows,
            r1.query(parts),
            r2.query(parts),  # type: ignore[attr-defined]
        )
        shard_ids.append(np.asarray(a.column("id")))  # type: ignore[attr-defined]
        assert len(shard_ids[-1]) > 0
    assert len(np.intersect1d(*shard_ids)) == 0
    assert sum(len(i) for i in shard_ids) == ROWS * len(SHARDS)


def mutations(node: ServerHandle, db: str) -> int:
    return int(node.query(f"SELECT count() FROM system.mutations WHERE database = '{db}' AND table = 'laion_local'"))


def test_replica_killed_mid_load_catches_up_and_rerun_adds_nothing(
    repl: ReplicatedCluster,
    db: str,
    make_shards,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    src = make_shards(SHARDS, rows=ROWS, dim=32)
    victim = repl.grid[1][0]  # shard 2's first replica: the one deletes and reads try first
    # 1,000-row segments: 48 INSERTs landing one after another, so the victim holds rows well before the load ends
    # (one 12,000-row segment a shard ended the load before the poll saw any, once the run got faster)
    short = ("--segment-rows", "1000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", *run_args(repl, src, db, tmp_path / "ledger.json", *short)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **repl.env()},
    )
    try:
        seen = 0
        while proc.poll() is None and seen == 0:
            with contextlib.suppress(RuntimeError):
                seen = int(victim.query(f"SELECT count() FROM {db}.laion_local"))
            time.sleep(0.02)
        victim.kill()
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert seen > 0, "the load ended before the replica could be killed"
    first = (proc.returncode, out.decode(), err.decode())
    victim.start()
    if first[0] != 0:  # allowed: fail retriably (a torn range is not deleted while a replica is down), rerun
        assert "while a replica is down" in first[2], first
        res = cli(*run_args(repl, src, db, tmp_path / "ledger.json", *short), env=repl.env())
        assert res.returncode == 0, (first, res.stderr)
    assert_replicas_equal_and_exact(repl, db, src)
    engines = victim.query(f"SELECT name, engine FROM system.tables WHERE database = '{db}' ORDER BY name").decode()
    assert engines.split("\n")[:2] == ["laion\tDistributed", "laion_local\tReplicatedMergeTree"]

    res = cli(*run_args(repl, src, db, tmp_path / "fresh-ledger.json"), env=repl.env())
    assert res.returncode == 0, res.stderr
    assert "0 rows inserted" in res.stdout and f"{ROWS * len(SHARDS):,} rows already present" in res.stdout
    assert_replicas_equal_and_exact(repl, db, src)
    notes = [ln for ln in first[2].splitlines() if any(w in ln for w in ("retry", "replacing", "down", "replica"))]
    print("first run:", first[0], first[1].strip().splitlines()[-1:], notes[:6])


def test_torn_range_is_deleted_once_per_shard(
    repl: ReplicatedCluster,
    db: str,
    make_shards,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """Stray copies on shard 2 (replicated to both its replicas): one ALTER DELETE on that shard, none per replica."""
    src = make_shards(SHARDS, rows=ROWS, dim=32)
    res = cli(*run_args(repl, src, db, tmp_path / "ledger.json"), env=repl.env())
    assert res.returncode == 0, res.stderr
    sync_replicas(repl, db)
    dup = plan_batches(1, ROWS, BATCH)[3]
    r = repl.grid[1][1]
    r.query(
        f"INSERT INTO {db}.laion_local SELECT * FROM {db}.laion WHERE id BETWEEN {dup.first_id} AND {dup.first_id + 9}"
    )
    sync_replicas(repl, db)
    assert [mutations(n, db) for n in repl.nodes] == [0, 0, 0, 0]

    res = cli(*run_args(repl, src, db, tmp_path / "fresh-ledger.json"), env=repl.env())
    assert res.returncode == 0, res.stderr
    assert "replacing the range" in res.stderr
    assert_replicas_equal_and_exact(repl, db, src)
    # the delete of the torn range is one mutation per shard, seen on both replicas of each shard
    assert [mutations(n, db) for n in repl.nodes] == [1, 1, 1, 1]


def test_a_range_an_earlier_run_deleted_is_sent_again_without_being_deduplicated(
    repl: ReplicatedCluster,
    db: str,
    make_shards,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """A run stopped between deleting a range and sending it again (CI under load: a replica killed mid-load, one
    shard's delete done, the other's refused, the run out of retries): the rerun finds the range absent. Each
    shard's replicas still remember the first run's identical blocks, so a plain resend is dropped as duplicate
    and the rows are lost (6,060 of 48,000 were). The rerun reads the earlier deletes back from the mutations."""
    src = make_shards(SHARDS, rows=ROWS, dim=32)
    res = cli(*run_args(repl, src, db, tmp_path / "ledger.json"), env=repl.env())
    assert res.returncode == 0, res.stderr
    sync_replicas(repl, db)
    for first, _ in repl.grid:  # what the stopped run left: its delete of shard 0's range on every shard
        first.query(f"ALTER TABLE {db}.laion_local DELETE WHERE id BETWEEN 0 AND {ROWS - 1}")
    sync_replicas(repl, db)
    assert repl.entry.query(f"SELECT count() FROM {db}.laion WHERE id < {ROWS}").strip() == b"0"

    res = cli(*run_args(repl, src, db, tmp_path / "fresh-ledger.json"), env=repl.env())
    assert res.returncode == 0, res.stderr
    assert_replicas_equal_and_exact(repl, db, src)


def test_no_shard_deletes_while_another_shards_replica_is_down(
    repl: ReplicatedCluster,
    db: str,
    make_shards,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    """A torn range's delete is refused before any shard runs it when one shard has a replica down: a delete done
    on one shard only would leave the range absent there and present elsewhere."""
    src = make_shards(SHARDS, rows=ROWS, dim=32)
    res = cli(*run_args(repl, src, db, tmp_path / "ledger.json"), env=repl.env())
    assert res.returncode == 0, res.stderr
    sync_replicas(repl, db)
    dup = plan_batches(1, ROWS, BATCH)[3]  # a torn range: stray copies of a few of its rows on shard 1
    repl.grid[0][0].query(
        f"INSERT INTO {db}.laion_local SELECT * FROM {db}.laion WHERE id BETWEEN {dup.first_id} AND {dup.first_id + 9}"
    )
    victim = repl.grid[1][1]  # shard 2's second replica
    victim.kill()
    try:
        res = cli(*run_args(repl, src, db, tmp_path / "fresh-ledger.json", "--max-retries", "1"), env=repl.env())
        assert res.returncode == 4, res.stderr
        assert "while a replica is down" in res.stderr
        assert [mutations(n, db) for n in (repl.grid[0][0], repl.grid[0][1], repl.grid[1][0])] == [0, 0, 0]
    finally:
        victim.start()
    res = cli(*run_args(repl, src, db, tmp_path / "fresh-ledger.json"), env=repl.env())
    assert res.returncode == 0, res.stderr
    assert_replicas_equal_and_exact(repl, db, src)


def test_members_on_one_host_need_node_flags(repl: ReplicatedCluster, db: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    args = run_args(repl, src, db, tmp_path / "ledger.json")
    bare = [a for i, a in enumerate(args) if a != "--node" and (i == 0 or args[i - 1] != "--node")]
    res = cli(*bare, env=repl.env())
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert f"cluster '{CLUSTER}' lists host 127.0.0.1 with TCP ports" in lines[0]
    assert "--node 127.0.0.1:TCP_PORT=URL" in lines[0]

    res = cli(*args, "--node", "127.0.0.1:1=http://127.0.0.1:1", env=repl.env())
    assert res.returncode == 2
    assert "--node 127.0.0.1:1 names no member of cluster 'repl'" in res.stderr.strip().splitlines()[-1]


def test_vector_commands_on_the_cluster_say_what_18_16_lacks(repl: ReplicatedCluster, db: str, tmp_path: Path) -> None:
    """index/search/eval --cluster reach the cluster (the --node endpoints included) and refuse in one line."""
    target = ("--target", repl.entry.http_url, "--database", db, "--cluster", CLUSTER, *repl.node_flags())
    for command in (["index", "--no-progress"], ["search", "--like-id", "0"], ["eval"]):
        res = cli(*command, *target, env=repl.env())
        assert res.returncode != 0
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
        assert "ClickHouse 18.16.1 at " in lines[0]
        assert "vector_similarity" in lines[0] or "cosineDistance" in lines[0]


def test_plain_local_table_on_a_replicated_cluster_is_refused(repl: ReplicatedCluster, db: str, tmp_path: Path) -> None:
    cols = "id Int64, url String, caption String, NSFW String, similarity Float32, "
    cols += "image_embedding Array(Float32), text_embedding Array(Float32)"
    node = repl.grid[1][1]
    node.query(f"CREATE DATABASE {db}")
    node.query(f"CREATE TABLE {db}.laion_local ({cols}) ENGINE = MergeTree ORDER BY id")
    src = tmp_path / "src"
    src.mkdir()
    res = cli(*run_args(repl, src, db, tmp_path / "ledger.json"), env=repl.env())
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert f"on 127.0.0.1:{node.http_port}: table {db}.laion_local has engine MergeTree" in last
    assert "replicas would diverge" in last
