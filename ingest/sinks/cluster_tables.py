"""The cluster sink's tables: `{table}_local` on every node (replicated when the cluster has a coordinator),
`{table}` Distributed over them, created ON CLUSTER or node by node, then checked on every live node (engines and
columns), as for one node. Split from `cluster.py` so each stays small; the decisions are the sink's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from ingest.clickhouse import cluster_sql as csql
from ingest.clickhouse.sql import create_database_sql, describe_sql, table_problem
from ingest.core.config import TargetConfig
from ingest.core.errors import ConfigError, SchemaMismatchError, TargetError
from ingest.core.ids import TableRef
from ingest.sinks.fanout import all_of
from ingest.sinks.http import HttpSink

log = logging.getLogger("ingest")


@dataclass(frozen=True, slots=True)
class TableSetup:
    """What creating and checking the tables needs of a connected ClusterSink."""

    cluster: str
    zk_path: str
    target: TargetConfig
    entry: HttpSink
    nodes: dict[str, HttpSink]
    """Live node sinks by base URL."""
    replicated: bool
    on_cluster: bool
    """DDL may go through the ON CLUSTER queue (a coordinator, and every member up)."""
    max_replicas: int


async def ensure_tables(setup: TableSetup, ref: TableRef, window: int | None) -> None:
    """Create the local tables and the Distributed table everywhere, then check every live node's tables."""
    if not setup.replicated:
        log.info(
            "cluster %s has no ZooKeeper/Keeper: %s is a plain MergeTree on each node, created node by node; "
            "nothing is replicated",
            setup.cluster,
            csql.local_ref(ref).key,
        )
    if setup.replicated:
        await all_of([_check_macros(setup, url, s) for url, s in setup.nodes.items()])
    if not (setup.on_cluster and await _create_on_cluster(setup, ref, window)):
        await all_of([_create_on_node(setup, s, ref, window) for s in setup.nodes.values()])
    entry_url = setup.target.spec.base_url
    if entry_url not in setup.nodes:  # an entry outside the cluster still needs the Distributed table
        await setup.entry.execute(create_database_sql(ref.database), database="default")
        await setup.entry.execute(
            csql.distributed_table_sql(ref, setup.cluster, False, setup.target.schema), database="default"
        )
        await _verify(setup, entry_url, setup.entry, ref, node=False)
    await all_of([_verify(setup, url, s, ref, node=True) for url, s in setup.nodes.items()])


def _local_sql(setup: TableSetup, ref: TableRef, window: int | None, on_cluster: bool) -> str:
    local, cluster = csql.local_ref(ref), setup.cluster if on_cluster else None
    if setup.replicated:
        return csql.replicated_local_table_sql(local, setup.zk_path, cluster, setup.target.schema)
    return csql.local_table_sql(local, window, cluster, setup.target.schema)


async def _check_macros(setup: TableSetup, url: str, sink: HttpSink) -> None:
    rows = await sink.query(csql.macros_sql(), database="default")
    missing = csql.missing_macros([(str(r["macro"]), str(r["substitution"])) for r in rows])
    if missing:
        raise ConfigError(
            f"cluster {setup.cluster!r} node {urlsplit(url).netloc} defines no <macros> {', '.join(missing)}: "
            "a replicated table needs {shard} and {replica} on every node"
        )


async def _create_on_cluster(setup: TableSetup, ref: TableRef, window: int | None) -> bool:
    """One DDL per object through the queue; False (after a warning) if the cluster refuses it."""
    statements = [
        csql.create_database_on_cluster_sql(ref.database, setup.cluster),
        _local_sql(setup, ref, window, on_cluster=True),
        csql.distributed_table_sql(ref, setup.cluster, True, setup.target.schema),
    ]
    try:
        for sql in statements:
            await setup.entry.execute(sql, database="default")
    except TargetError as exc:
        if exc.retriable:
            raise
        log.warning("cluster %s: ON CLUSTER DDL refused (%s); creating tables node by node", setup.cluster, exc)
        return False
    return True


async def _create_on_node(setup: TableSetup, sink: HttpSink, ref: TableRef, window: int | None) -> None:
    await sink.execute(create_database_sql(ref.database), database="default")
    await sink.execute(_local_sql(setup, ref, window, on_cluster=False), database="default")
    await sink.execute(csql.distributed_table_sql(ref, setup.cluster, False, setup.target.schema), database="default")


async def _verify(setup: TableSetup, url: str, sink: HttpSink, ref: TableRef, node: bool) -> None:
    """Engines and columns of our tables on one server; a mismatch is refused as for one node."""
    where = urlsplit(url).netloc
    rows = await sink.query(csql.engines_sql(ref), database="default")
    engines = {str(r["name"]): (str(r["engine"]), str(r["engine_full"])) for r in rows}
    problem = csql.engine_problem(ref, setup.cluster, engines, node)
    local = csql.local_ref(ref)
    if not problem and node and setup.replicated and setup.max_replicas > 1:
        engine = engines[local.table][0]
        if not engine.startswith("Replicated"):
            problem = (
                f"table {local.key} has engine {engine}, but cluster {setup.cluster!r} has replicas and a "
                "coordinator: its replicas would diverge (recreate it as ReplicatedMergeTree)"
            )
    if problem:
        raise SchemaMismatchError(f"on {where}: {problem}")
    for table in (ref, csql.local_ref(ref)) if node else (ref,):
        cols = await sink.query(describe_sql(table), database="default")
        mismatch = table_problem(cols, setup.target.schema)
        if mismatch:
            raise SchemaMismatchError(f"table {table.key} on {where} {mismatch}")
