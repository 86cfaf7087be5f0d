"""Pure pieces of the cluster path: DDL text and engine checks, replicated DDL, --node endpoints, placement,
topology refusals, per-shard search routing and top-k merging (an in-memory fake sink stands in for the shards, to
reach the routes a 26.9 cluster does not take by itself; the real thing is tests/test_cluster26.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ingest.clickhouse import cluster_sql as csql
from ingest.core.config import NodeEndpoint, TargetConfig, parse_node, validate_zookeeper_path
from ingest.core.errors import ConfigError, TargetError, TransientTargetError, UsageError
from ingest.core.ids import TableRef
from ingest.core.target import parse_target
from ingest.sinks.base import server_info
from ingest.sinks.cluster import ClusterSink, node_base_url, placement
from ingest.sinks.cluster_topology import ClusterNode, check_topology, node_urls
from ingest.vector.cluster import ClusterHits, KnnSearch, choose_route, cluster_search, merge_top_k
from ingest.vector.cluster_index import SummedDisplay

REF = TableRef("db", "laion")
LOCAL = csql.local_ref(REF)


def test_replicated_local_table_uses_the_macros_and_the_path() -> None:
    sql = csql.replicated_local_table_sql(LOCAL, "/clickhouse/tables/{shard}", "repl")
    assert sql.startswith("CREATE TABLE IF NOT EXISTS `db`.`laion_local` ON CLUSTER `repl` (`id` Int64, ")
    assert sql.endswith(
        "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/db/laion_local', '{replica}') ORDER BY id "
        "SETTINGS index_granularity = 256"
    )
    assert "non_replicated_deduplication_window" not in sql
    node_by_node = csql.replicated_local_table_sql(LOCAL, "/zk/{shard}/", None)
    assert " ON CLUSTER " not in node_by_node and "('/zk/{shard}/db/laion_local'," in node_by_node
    # the engine check accepts it as the local table
    engines = {
        "laion": ("Distributed", "Distributed('repl', 'db', 'laion_local', cityHash64(id))"),
        "laion_local": ("ReplicatedMergeTree", "ReplicatedMergeTree('/zk/01/db/laion_local', 'r1') ORDER BY id"),
    }
    assert csql.engine_problem(REF, "repl", engines, node=True) is None


def test_zookeeper_path_and_macros() -> None:
    assert validate_zookeeper_path("/clickhouse/tables/{shard}/") == "/clickhouse/tables/{shard}"
    for bad in ("clickhouse/{shard}", "/clickhouse/tables", "/x/{shard}'); DROP"):
        with pytest.raises(ConfigError, match="--zookeeper-path"):
            validate_zookeeper_path(bad)
    assert csql.missing_macros([("shard", "01"), ("replica", "r1")]) == []
    assert csql.missing_macros([("shard", "01")]) == ["replica"]


def test_node_flag_parsing() -> None:
    assert parse_node("127.0.0.1:9001=http://127.0.0.1:8124") == NodeEndpoint(
        "127.0.0.1", 9001, "http://127.0.0.1:8124"
    )
    assert parse_node("[::1]:9000=https://h:8443").key() == ("::1", 9000)
    for bad in ("127.0.0.1=http://x:1", "h:9000", "h:port=http://x:1", "h:9000=chdb:./x", "h:9000=http://x:1/db"):
        with pytest.raises(ConfigError, match="--node"):
            parse_node(bad)


def nodes_on_one_host() -> list[ClusterNode]:
    return [ClusterNode(s, 1, r, "127.0.0.1", 9000 + 10 * s + r) for s in (1, 2) for r in (1, 2)]


def test_node_urls_follow_the_node_flags() -> None:
    nodes = nodes_on_one_host()
    flags = [NodeEndpoint("127.0.0.1", n.tcp_port, f"http://127.0.0.1:{8000 + n.tcp_port % 100}") for n in nodes]
    urls = node_urls("repl", "http://127.0.0.1:8011", nodes, flags)
    assert [urls[n] for n in nodes] == [
        "http://127.0.0.1:8011",
        "http://127.0.0.1:8012",
        "http://127.0.0.1:8021",
        "http://127.0.0.1:8022",
    ]
    with pytest.raises(ConfigError, match=r"lists host 127\.0\.0\.1 with TCP ports .*--node 127\.0\.0\.1:TCP_PORT=URL"):
        node_urls("repl", "http://127.0.0.1:8011", nodes, flags[:2])
    with pytest.raises(ConfigError, match=r"--node 127\.0\.0\.1:1 names no member of cluster 'repl'"):
        node_urls("repl", "http://127.0.0.1:8011", nodes, [*flags, NodeEndpoint("127.0.0.1", 1, "http://h:1")])
    spread = [ClusterNode(1, 1, 1, "ch-1", 9000), ClusterNode(2, 1, 1, "ch-2", 9000)]
    assert list(node_urls("c", "https://ch-1:8443", spread, []).values()) == ["https://ch-1:8443", "https://ch-2:8443"]


def test_local_mode_serves_replicated_shards_only_when_replicated() -> None:
    nodes = nodes_on_one_host()
    check_topology("repl", nodes, "local", replicated=True)
    with pytest.raises(ConfigError, match="--insert-mode local needs one replica per shard"):
        check_topology("repl", nodes, "local", replicated=False)


def test_route_and_merge() -> None:
    both = ["image_index", "image_index"]
    assert choose_route(both, both, brute=False) == "distributed"
    assert choose_route([], both, brute=False) == "shards"  # the server could not EXPLAIN through Distributed
    assert choose_route(["image_index", None], both, brute=False) == "shards"  # a remote shard read without it
    assert choose_route(["image_index"], both, brute=False) == "shards"  # only the entry's own shard is known
    assert choose_route(["image_index", "image_index"], ["image_index", None], brute=False) == "distributed"
    assert choose_route([None, None], [None, None], brute=False) == "distributed"
    assert choose_route([], ["image_index"], brute=True) == "distributed"
    a = [{"id": 5, "distance": 0.1}, {"id": 7, "distance": 0.3}]
    b = [{"id": 2, "distance": 0.2}, {"id": 9, "distance": 0.1}]
    assert [r["id"] for r in merge_top_k([a, b], 3)] == [5, 9, 2]


def _read(index: str | None) -> list[dict[str, Any]]:
    """One ReadFromMergeTree of an `EXPLAIN indexes = 1` plan, reading `index` (None: no vector index)."""
    rows = [{"explain": "      ReadFromMergeTree (db.laion_local)"}, {"explain": "      Indexes:"}]
    rows += [{"explain": "        PrimaryKey"}, {"explain": "          Condition: true"}]
    if index is not None:
        rows += [
            {"explain": "        Skip"},
            {"explain": f"          Name: {index}"},
            {"explain": "          Description: vector_similarity GRANULARITY 100000000"},
        ]
    return rows


PLAN_WITH_INDEX = _read("image_index")
"""A shard's own plan of the query on its local table."""
DIST_PLAN_BOTH = [{"explain": "Union"}, *_read("image_index"), {"explain": "ReadFromRemote"}, *_read("image_index")]
"""`EXPLAIN distributed = 1` through Distributed: the entry's shard, then the remote one, both on the index."""
DIST_PLAN_ENTRY_ONLY = [{"explain": "Union"}, *_read("image_index"), {"explain": "ReadFromRemote (remote replica)"}]
"""A plan that shows only the entry's own shard (the remote one's read unknown)."""


def test_explain_reads_one_per_shard() -> None:
    text = "\n".join(r["explain"] for r in DIST_PLAN_BOTH)
    assert csql.explain_reads(text) == ["image_index", "image_index"]
    mixed = "\n".join(r["explain"] for r in [*_read(None), *_read("text_index")])
    assert csql.explain_reads(mixed) == [None, "text_index"]
    assert csql.explain_reads("ReadFromRemote (Read from remote replica)") == []


class FakeNode:
    """Answers EXPLAIN with a canned plan and a search with canned rows; records what it was asked."""

    def __init__(self, plan: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
        self.plan, self.rows, self.asked = plan, rows, []  # type: list[dict[str, Any]], list[dict[str, Any]], list[str]
        self.info = server_info("25.8.1")  # a node with vector indexes (the Sink protocol's `info`)

    async def query(self, sql: str, settings: dict[str, str | int] | None = None) -> list[dict[str, Any]]:
        self.asked.append(sql)
        return self.plan if sql.startswith("EXPLAIN") else self.rows


class FakeCluster(FakeNode):
    def __init__(self, plan: list[dict[str, Any]], shards: list[FakeNode]) -> None:
        super().__init__(plan, [{"id": 1, "distance": 0.0}])
        self.shards = shards

    def shard_sinks(self) -> list[FakeNode]:
        return self.shards


def search(cluster: FakeCluster, settings: dict[str, str | int]) -> ClusterHits:
    knn = KnnSearch(REF, "image_embedding", "cosineDistance", "[1.0]", 2, settings)
    return asyncio.run(cluster_search(cluster, knn))  # type: ignore[arg-type]


def test_search_fans_out_where_distributed_loses_the_index() -> None:
    s1 = FakeNode(PLAN_WITH_INDEX, [{"id": 10, "distance": 0.4}, {"id": 11, "distance": 0.5}])
    s2 = FakeNode(PLAN_WITH_INDEX, [{"id": 20, "distance": 0.1}, {"id": 21, "distance": 0.6}])
    cluster = FakeCluster(DIST_PLAN_ENTRY_ONLY, [s1, s2])
    hits = search(cluster, {})
    assert hits.route == "shards" and hits.index == "image_index"
    assert [r["id"] for r in hits.rows] == [20, 10]
    assert [u.to_json() for u in hits.shards] == [
        {"shard": 1, "index_used": True, "index": "image_index"},
        {"shard": 2, "index_used": True, "index": "image_index"},
    ]
    assert all("FROM `db`.`laion_local`" in q for q in s1.asked + s2.asked)
    assert not any(q.startswith("SELECT") for q in cluster.asked)  # only its EXPLAIN went through Distributed
    assert any(q.startswith("EXPLAIN distributed = 1, indexes = 1 SELECT") for q in cluster.asked)


def test_search_goes_through_distributed_when_its_plan_uses_the_index() -> None:
    shards = [FakeNode(PLAN_WITH_INDEX, []), FakeNode(PLAN_WITH_INDEX, [])]
    cluster = FakeCluster(DIST_PLAN_BOTH, shards)
    hits = search(cluster, {})
    assert hits.route == "distributed" and [r["id"] for r in hits.rows] == [1]
    assert any(q.startswith("SELECT") and "FROM `db`.`laion` " in q for q in cluster.asked)
    brute = search(FakeCluster(DIST_PLAN_BOTH, [FakeNode(PLAN_WITH_INDEX, [])]), {"use_skip_indexes": 0})
    assert brute.route == "distributed" and brute.index is None
    assert [u.index for u in brute.shards] == [None]


def test_build_progress_is_summed_over_shards_and_closed_once() -> None:
    seen: list[object] = []

    class Recorder:
        def update(self, rows_done: int, rows_total: int) -> None:
            seen.append((rows_done, rows_total))

        def close(self) -> None:
            seen.append("closed")

    made: list[tuple[str, int]] = []

    def display_for(name: str, total: int) -> Recorder:
        made.append((name, total))
        return Recorder()

    summed = SummedDisplay(display_for, "image_index", 30, 2)
    a, b = summed.part(0)("image_index", 10), summed.part(1)("image_index", 20)
    a.update(5, 10)
    b.update(20, 20)
    a.close()
    assert made == [("image_index", 30)] and seen == [(5, 30), (25, 30)]  # one display, the shards' rows added
    b.close()
    summed.close()  # after a failure path: never a second close
    assert seen[-1] == "closed" and seen.count("closed") == 1


def test_deleted_ranges_are_read_back_from_mutation_commands_as_each_server_lists_them() -> None:
    from ingest.clickhouse.cluster_sql import deleted_ranges

    assert deleted_ranges(
        [
            "DELETE WHERE (id >= 0) AND (id <= 11999)",  # 18.16 rewrites BETWEEN
            "DELETE WHERE id BETWEEN 30000000 AND 30011999",  # newer servers keep it
            "UPDATE caption = '' WHERE id = 3",  # someone else's mutation: not ours
            "DELETE WHERE NSFW = 'NSFW'",
        ]
    ) == [(0, 11999), (30_000_000, 30_011_999)]


def test_ddl_text() -> None:
    ref = TableRef("db", "laion")
    assert csql.local_ref(ref) == TableRef("db", "laion_local")
    assert csql.create_database_on_cluster_sql("db", "c-1") == "CREATE DATABASE IF NOT EXISTS `db` ON CLUSTER `c-1`"
    local = csql.local_table_sql(csql.local_ref(ref), None, "two")
    assert local.startswith("CREATE TABLE IF NOT EXISTS `db`.`laion_local` ON CLUSTER `two` (`id` Int64, ")
    assert local.endswith("ENGINE = MergeTree ORDER BY id SETTINGS index_granularity = 256")
    dist = csql.distributed_table_sql(ref, "two")
    assert dist.endswith("ENGINE = Distributed('two', 'db', 'laion_local', cityHash64(id))")
    assert " ON CLUSTER " not in dist
    with pytest.raises(UsageError, match="invalid cluster name"):
        csql.distributed_table_sql(ref, "two; DROP TABLE x")


def test_distributed_target_and_engine_checks() -> None:
    assert csql.distributed_target("Distributed('two', 'db', 'laion_local', cityHash64(id))") == (
        "two",
        "db",
        "laion_local",
    )
    assert csql.distributed_target("Distributed(two, db, laion_local)") == ("two", "db", "laion_local")
    assert csql.distributed_target("MergeTree ORDER BY id") is None
    ref = TableRef("db", "laion")
    good = {
        "laion": ("Distributed", "Distributed('two', 'db', 'laion_local', cityHash64(id))"),
        "laion_local": ("MergeTree", "MergeTree ORDER BY id"),
    }
    assert csql.engine_problem(ref, "two", good, node=True) is None
    assert "expected Distributed over cluster 'other'" in str(csql.engine_problem(ref, "other", good, node=True))
    assert csql.engine_problem(ref, "two", {"laion": good["laion"]}, node=False) is None
    assert "laion_local has no such table" in str(csql.engine_problem(ref, "two", {"laion": good["laion"]}, True))


def test_sync_setting_prefers_the_new_name() -> None:
    assert csql.pick_sync_setting(["insert_distributed_sync"]) == "insert_distributed_sync"
    both = ["insert_distributed_sync", "distributed_foreground_insert"]
    assert csql.pick_sync_setting(both) == "distributed_foreground_insert"
    assert csql.pick_sync_setting([]) == "insert_distributed_sync"


def test_node_urls_keep_the_target_scheme_and_port() -> None:
    assert node_base_url("https://ch-0.example:8443", "ch-3.example") == "https://ch-3.example:8443"
    assert node_base_url("http://127.0.0.1:8123", "::1") == "http://[::1]:8123"


def test_placement_is_deterministic_and_weighted() -> None:
    picks = [placement(s, i, [1, 3]) for s in range(40) for i in range(100)]
    assert picks == [placement(s, i, [1, 3]) for s in range(40) for i in range(100)]
    share = picks.count(1) / len(picks)
    assert 0.70 < share < 0.80  # weight 3 of 4
    assert {placement(s, i, [1]) for s in range(5) for i in range(5)} == {0}
    assert {placement(s, i, [0, 2, 0]) for s in range(5) for i in range(20)} == {1}


def test_a_read_through_distributed_that_loses_a_node_is_transient() -> None:
    """A count through the Distributed table whose shard node dies mid-read (18.16: code 32, "Attempt to read after
    eof: while receiving packet from HOST:PORT") is retried by the landing, not fatal; other errors keep their class.
    """

    class Entry:
        def __init__(self, exc: TargetError) -> None:
            self.exc = exc

        async def count_range(self, ref: TableRef, first_id: int, last_id: int) -> int:
            raise self.exc

        async def query(self, sql: str, settings: object = None) -> list[dict[str, object]]:
            raise self.exc

    sink = ClusterSink(TargetConfig(parse_target("http://127.0.0.1:1"), "db", cluster="c"))
    lost = TargetError("Code: 32, DB::Exception: Attempt to read after eof: while receiving packet from x:9000", 32)
    sink.entry = Entry(lost)  # type: ignore[assignment]
    with pytest.raises(TransientTargetError, match="Attempt to read after eof") as info:
        asyncio.run(sink.count_range(TableRef("db", "laion"), 0, 9))
    assert info.value.code == 32
    with pytest.raises(TransientTargetError):
        asyncio.run(sink.query("SELECT 1"))
    sink.entry = Entry(TargetError("Code: 60, table doesn't exist", 60))  # type: ignore[assignment]
    with pytest.raises(TargetError) as other:
        asyncio.run(sink.count_range(TableRef("db", "laion"), 0, 9))
    assert not other.value.retriable
