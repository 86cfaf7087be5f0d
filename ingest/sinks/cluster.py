"""A ClickHouse cluster as one Sink: `{table}_local` (MergeTree) on every node, `{table}` Distributed over them.

Composed of HttpSinks: one for the entry node (the --target), one per node of the cluster as the entry's
`system.clusters` lists it. Nodes are reached over HTTP at the target's scheme and port with the node's host name
(every node serving HTTP on the same port is the usual production setup) and the same credentials.

- Tables: `ON CLUSTER` when the cluster has a distributed DDL queue (ZooKeeper/Keeper), else node by node; either
  way every node's tables are then checked (columns and engines), as for one node.
- Inserts, `--insert-mode distributed`: through the Distributed table, synchronously, so success means the rows
  are on their shards. `--insert-mode local`: each segment goes straight to one shard's local table, chosen by
  `placement` (crc32 of "shard:segment index" over the shard weights): deterministic, so a retry goes where the first
  attempt went.
- Counts go through the Distributed table (they see every node); deletes run on every node's local table (ALTER
  is not supported on Distributed) and wait for the mutation on each.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import zlib
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pyarrow as pa

from ingest.clickhouse import cluster_sql as csql
from ingest.clickhouse.sql import create_database_sql, describe_sql, table_problem
from ingest.core.config import TargetConfig
from ingest.core.errors import ConfigError, IngestError, SchemaMismatchError, TargetError, first_error
from ingest.core.ids import TableRef
from ingest.core.plan import ID_STRIDE, SegmentPlan
from ingest.sinks.base import ServerInfo
from ingest.sinks.http import DEDUP_WINDOW, HttpSink

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One replica of one shard as `system.clusters` names it."""

    shard: int
    weight: int
    replica: int
    host: str
    tcp_port: int


def parse_nodes(rows: list[dict[str, Any]]) -> list[ClusterNode]:
    return [
        ClusterNode(
            shard=int(r["shard_num"]),
            weight=int(r["shard_weight"]),
            replica=int(r["replica_num"]),
            host=str(r["host_name"]),
            tcp_port=int(r["port"]),
        )
        for r in rows
    ]


def node_base_url(target_base_url: str, host: str) -> str:
    """The node's HTTP endpoint: the target's scheme and port, the node's host."""
    parts = urlsplit(target_base_url)
    name = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{parts.scheme}://{name}:{parts.port}"


def check_topology(cluster: str, nodes: list[ClusterNode], insert_mode: str) -> None:
    """Refuse layouts this sink cannot serve correctly, in one line each."""
    ports: dict[str, set[int]] = {}
    for n in nodes:
        ports.setdefault(n.host, set()).add(n.tcp_port)
    for host, seen in ports.items():
        if len(seen) > 1:
            raise ConfigError(
                f"cluster {cluster!r} lists host {host} with TCP ports {sorted(seen)}: nodes are reached over HTTP "
                "at the target's port, so each host must run one server"
            )
    if insert_mode == "local":
        multi = sorted({n.shard for n in nodes if n.replica > 1})
        if multi:
            raise ConfigError(
                f"--insert-mode local needs one replica per shard; cluster {cluster!r} shard {multi[0]} has more "
                "(use --insert-mode distributed)"
            )
        if sum(n.weight for n in nodes) <= 0:
            raise ConfigError(f"cluster {cluster!r} gives every shard weight 0: no shard takes inserts")


def batch_position(first_id: int, batch_rows: int) -> tuple[int, int]:
    """(shard, batch index) of a batch from its first id (dropped rows cannot move it out of its batch)."""
    shard, row = divmod(first_id, ID_STRIDE)
    return shard, row // batch_rows


def placement(shard: int, index: int, weights: Sequence[int]) -> int:
    """Which shard (position in `weights`) takes a segment in local mode: crc32("shard:index") modulo the total
    weight, walked over the cumulative weights, as Distributed itself weighs shards (weight 0 takes nothing).
    Pure and stable across runs.
    """
    total = sum(weights)
    slot = zlib.crc32(f"{shard}:{index}".encode()) % total
    for pos, weight in enumerate(weights):
        if slot < weight:
            return pos
        slot -= weight
    raise AssertionError("unreachable")


def combined_info(infos: Sequence[ServerInfo]) -> ServerInfo:
    """A feature counts only if every server has it (the entry's version is the one named)."""
    return ServerInfo(
        version=infos[0].version,
        dedup_token=all(i.dedup_token for i in infos),
        vector_index=all(i.vector_index for i in infos),
        cosine_distance=all(i.cosine_distance for i in infos),
        query_parameters=all(i.query_parameters for i in infos),
        async_insert=all(i.async_insert for i in infos),
    )


async def all_of(calls: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run coroutines concurrently; the first error of our tree leaves as itself, not as an ExceptionGroup."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(c) for c in calls]
    except ExceptionGroup as group:
        first = first_error(group, IngestError)
        if first is not None:
            raise first from None
        raise
    return [t.result() for t in tasks]


class ClusterSink:
    """Sink over a ClickHouse cluster (`--cluster NAME` with an http(s) target)."""

    def __init__(self, target: TargetConfig, batch_rows: int) -> None:
        if target.cluster is None:
            raise ConfigError("ClusterSink needs --cluster")
        self._cluster = csql.validate_cluster(target.cluster)
        self._target = target
        self._batch_rows = batch_rows
        self._mode = target.insert_mode
        self._entry = HttpSink(target)
        self._nodes: dict[str, HttpSink] = {}
        """Node sinks by base URL (a host listed for several shards is one server)."""
        self._shards: list[HttpSink] = []
        self._weights: list[int] = []
        self._on_cluster = False
        self.info = self._entry.info

    # -- connect ----------------------------------------------------------------------------------------------
    async def connect(self) -> ServerInfo:
        """Reach the entry, read the cluster's nodes from it, reach every node."""
        entry_info = await self._entry.connect()
        nodes = await self._discover()
        infos = [entry_info]
        for node in nodes:
            url = node_base_url(self._target.spec.base_url, node.host)
            if url not in self._nodes:
                sink = self._node_sink(url)
                self._nodes[url] = sink
                infos.append(await self._reach(node, sink))
            if node.replica == 1:
                self._shards.append(self._nodes[url])
                self._weights.append(node.weight)
        self.info = combined_info(infos)
        if self._mode == "distributed":
            known = [str(r["name"]) for r in await self._entry.query(csql.sync_setting_sql(), database="default")]
            self._entry.insert_extra = {csql.pick_sync_setting(known): 1}
        self._on_cluster = await self._has_ddl_queue()
        log.debug(
            "cluster %s: %d shard(s), %d node(s), DDL %s",
            self._cluster,
            len(self._shards),
            len(self._nodes),
            "ON CLUSTER" if self._on_cluster else "node by node",
        )
        return self.info

    async def _discover(self) -> list[ClusterNode]:
        rows = await self._entry.query(csql.cluster_nodes_sql(self._cluster), database="default")
        if not rows:
            names = [str(r["cluster"]) for r in await self._entry.query(csql.cluster_names_sql(), database="default")]
            raise ConfigError(
                f"cluster {self._cluster!r} is not defined on ClickHouse at {self._target.display()} "
                f"(its <remote_servers> has: {', '.join(names) or 'none'})"
            )
        nodes = parse_nodes(rows)
        check_topology(self._cluster, nodes, self._mode)
        return nodes

    def _node_sink(self, url: str) -> HttpSink:
        spec = dataclasses.replace(self._target.spec, base_url=url)
        return HttpSink(dataclasses.replace(self._target, spec=spec))

    async def _reach(self, node: ClusterNode, sink: HttpSink) -> ServerInfo:
        try:
            return await sink.connect()
        except TargetError as exc:
            raise type(exc)(
                f"cluster {self._cluster!r} node {node.host} (shard {node.shard}), reached over HTTP at the target's "
                f"port: {exc}",
                exc.code,
            ) from None

    async def _has_ddl_queue(self) -> bool:
        """ON CLUSTER needs ZooKeeper/Keeper; without it (18.16 out of the box) DDL goes node by node."""
        try:
            await self._entry.query(csql.ddl_queue_probe_sql(), database="default")
        except TargetError:
            return False
        return True

    # -- tables -----------------------------------------------------------------------------------------------
    async def ensure_table(self, ref: TableRef) -> None:
        """Create the local tables and the Distributed table everywhere, then check every node's tables."""
        window = DEDUP_WINDOW if self.info.dedup_token else None
        if not (self._on_cluster and await self._create_on_cluster(ref, window)):
            await all_of([self._create_on_node(s, ref, window) for s in self._nodes.values()])
        entry_url = self._target.spec.base_url
        if entry_url not in self._nodes:  # an entry outside the cluster still needs the Distributed table
            await self._entry.execute(create_database_sql(ref.database), database="default")
            await self._entry.execute(
                csql.distributed_table_sql(ref, self._cluster, False, self._target.schema), database="default"
            )
            await self._verify(entry_url, self._entry, ref, node=False)
        await all_of([self._verify(url, s, ref, node=True) for url, s in self._nodes.items()])

    async def _create_on_cluster(self, ref: TableRef, window: int | None) -> bool:
        """One DDL per object through the queue; False (after a warning) if the cluster refuses it."""
        statements = [
            csql.create_database_on_cluster_sql(ref.database, self._cluster),
            csql.local_table_sql(csql.local_ref(ref), window, self._cluster, self._target.schema),
            csql.distributed_table_sql(ref, self._cluster, True, self._target.schema),
        ]
        try:
            for sql in statements:
                await self._entry.execute(sql, database="default")
        except TargetError as exc:
            if exc.retriable:
                raise
            log.warning("cluster %s: ON CLUSTER DDL refused (%s); creating tables node by node", self._cluster, exc)
            return False
        return True

    async def _create_on_node(self, sink: HttpSink, ref: TableRef, window: int | None) -> None:
        await sink.execute(create_database_sql(ref.database), database="default")
        await sink.execute(
            csql.local_table_sql(csql.local_ref(ref), window, None, self._target.schema), database="default"
        )
        await sink.execute(
            csql.distributed_table_sql(ref, self._cluster, False, self._target.schema), database="default"
        )

    async def _verify(self, url: str, sink: HttpSink, ref: TableRef, node: bool) -> None:
        """Engines and columns of our tables on one server; a mismatch is refused as for one node."""
        where = urlsplit(url).netloc
        rows = await sink.query(csql.engines_sql(ref), database="default")
        engines = {str(r["name"]): (str(r["engine"]), str(r["engine_full"])) for r in rows}
        problem = csql.engine_problem(ref, self._cluster, engines, node)
        if problem:
            raise SchemaMismatchError(f"on {where}: {problem}")
        for table in (ref, csql.local_ref(ref)) if node else (ref,):
            cols = await sink.query(describe_sql(table), database="default")
            mismatch = table_problem(cols, self._target.schema)
            if mismatch:
                raise SchemaMismatchError(f"table {table.key} on {where} {mismatch}")

    # -- data -------------------------------------------------------------------------------------------------
    async def insert(
        self, ref: TableRef, segment: SegmentPlan, blocks: AsyncIterator[pa.RecordBatch], token: str | None
    ) -> None:
        if self._mode == "distributed":
            await self._entry.insert(ref, segment, blocks, token)
            return
        sink = self._shards[placement(segment.shard, segment.index, self._weights)]
        await sink.insert(csql.local_ref(ref), segment, blocks, token)

    async def count_range(self, ref: TableRef, first_id: int, last_id: int) -> int:
        return await self._entry.count_range(ref, first_id, last_id)

    async def delete_range(self, ref: TableRef, first_id: int, last_id: int) -> None:
        local = csql.local_ref(ref)
        await all_of([s.delete_range(local, first_id, last_id) for s in self._nodes.values()])

    async def query(self, sql: str, settings: dict[str, str | int] | None = None) -> list[dict[str, Any]]:
        return await self._entry.query(sql, settings)

    async def execute(self, sql: str, settings: dict[str, str | int] | None = None) -> None:
        await self._entry.execute(sql, settings)

    async def close(self) -> None:
        for sink in [self._entry, *self._nodes.values()]:
            await sink.close()


__all__ = ["ClusterNode", "ClusterSink", "batch_position", "node_base_url", "placement"]
