"""A ClickHouse cluster as one Sink: `{table}_local` on every node, `{table}` Distributed over them.

Composed of HttpSinks: one for the entry node (the --target), one per member of the cluster as the entry's
`system.clusters` lists it. A member is reached at its `--node HOST:TCP_PORT=URL` endpoint if one is given, else at
the target's scheme and port with the member's host name (every node serving HTTP on one port is the usual
production setup), with the same credentials.

- Coordinator: when the entry can read `system.zookeeper` the cluster has ZooKeeper/Keeper, and `{table}_local` is a
  ReplicatedMergeTree on the `{shard}`/`{replica}` macros, created `ON CLUSTER` (node by node if the queue refuses,
  or while a replica is down). Without one, `{table}_local` is a plain MergeTree created node by node, and the run
  says so: nothing is replicated then.
- Tables: either way every reachable node's tables are then checked (columns and engines), as for one node.
- Inserts, `--insert-mode distributed`: through the Distributed table, synchronously, so success means the rows are
  on their shards (declare `<internal_replication>true</internal_replication>` for replicated shards, so one
  replica takes the block and replication copies it). `--insert-mode local`: each segment goes straight to one
  shard's local table (its first live replica), chosen by `placement`: deterministic, so a retry goes where the
  first attempt went.
- Replica faults (replicated clusters): a replica unreachable at connect is skipped with a warning while its shard
  has another; deletes and local inserts fail over to the next replica of the shard.
- Counts go through the Distributed table (one that loses a shard's node mid-read is transient: counted again).
  Deletes: once per shard on a replicated cluster (the mutation replicates), on every node's local table
  otherwise; each waits for its mutation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ingest.clickhouse import cluster_sql as csql
from ingest.clickhouse.http_request import pending_mutations_sql
from ingest.clickhouse.sql import delete_range_sql
from ingest.core.config import TargetConfig, validate_zookeeper_path
from ingest.core.errors import (
    ConfigError,
    TargetError,
    TransientTargetError,
    UncertainInsertError,
)
from ingest.core.id_ranges import IdRanges
from ingest.core.ids import TableRef
from ingest.core.pieces import Piece
from ingest.core.plan import SegmentPlan
from ingest.sinks.base import ServerInfo
from ingest.sinks.cluster_tables import TableSetup, ensure_tables
from ingest.sinks.cluster_topology import (
    ClusterNode,
    check_topology,
    combined_info,
    node_base_url,
    node_urls,
    parse_nodes,
    placement,
)
from ingest.sinks.fanout import REMOTE_NODE_CODES, all_of, gone_or_down, remote_read
from ingest.sinks.http import DEDUP_WINDOW, HttpSink

REPLICATED_DELETE_WAIT = 15.0
"""Seconds a replicated delete is waited for before the load goes on (see `_replicated_delete`)."""

log = logging.getLogger("ingest")

T = TypeVar("T")


class ClusterSink:
    """Sink over a ClickHouse cluster (`--cluster NAME` with an http(s) target)."""

    def __init__(self, target: TargetConfig) -> None:
        if target.cluster is None:
            raise ConfigError("ClusterSink needs --cluster")
        self.cluster = csql.validate_cluster(target.cluster)
        self._zk_path = validate_zookeeper_path(target.zookeeper_path)
        self._target = target
        self._mode = target.insert_mode
        self.entry = HttpSink(target)
        self._nodes: dict[str, HttpSink] = {}
        """Live node sinks by base URL (a host listed for several shards is one server)."""
        self._replicas: list[list[HttpSink]] = []
        """Live replicas of each shard, in replica order."""
        self._preferred: list[int] = []
        """Per shard, the replica local-mode inserts go to (moves on after a transient failure)."""
        self._weights: list[int] = []
        self._replica_count: list[int] = []
        self._members = 0
        self.on_cluster = False
        self.replicated = False
        self._deleted = IdRanges()
        """Id ranges this sink deleted: their rows are sent again with block deduplication off."""
        self._fresh: dict[int, HttpSink] = {}
        """Clones of sinks (by id of the original) whose inserts skip deduplication (`insert_deduplicate=0`)."""
        self.info = self.entry.info
        self.column_major = self.entry.column_major
        """Every insert goes through one of our HttpSinks, all of the target's format."""

    # -- connect ----------------------------------------------------------------------------------------------
    async def connect(self) -> ServerInfo:
        """Reach the entry, read the cluster's members from it, reach every member."""
        infos = [await self.entry.connect()]
        nodes = await self._discover()
        self.replicated = self.on_cluster = await self._has_ddl_queue()
        check_topology(self.cluster, nodes, self._mode, self.replicated)
        urls = node_urls(self.cluster, self._target.spec.base_url, nodes, self._target.nodes)
        named = {e.key() for e in self._target.nodes}
        shards = sorted({n.shard for n in nodes})
        self._replicas = [[] for _ in shards]
        self._preferred = [0 for _ in shards]
        self._weights = [next(n.weight for n in nodes if n.shard == s) for s in shards]
        self._replica_count = [sum(1 for n in nodes if n.shard == s) for s in shards]
        self._members = len(set(urls.values()))
        failures: dict[int, TargetError] = {}
        for node in nodes:
            url = urls[node]
            if url not in self._nodes:
                sink = self._node_sink(url)
                try:
                    infos.append(await self._reach(node, sink, (node.host, node.tcp_port) in named))
                except TargetError as exc:
                    await sink.close()
                    failures.setdefault(node.shard, exc)
                    continue
                self._nodes[url] = sink
            self._replicas[shards.index(node.shard)].append(self._nodes[url])
        for pos, shard in enumerate(shards):
            if shard in failures and (not self.replicated or not self._replicas[pos]):
                raise failures[shard]
        for shard, err in failures.items():
            log.warning("cluster %s: %s; shard %d goes on with its other replica(s)", self.cluster, err, shard)
        self.info = combined_info(infos)
        if self._mode == "distributed":
            known = [str(r["name"]) for r in await self.entry.query(csql.sync_setting_sql(), database="default")]
            self.entry.insert_extra = {csql.pick_sync_setting(known): 1}
        log.debug("cluster %s: %d shard(s), %d live node(s)", self.cluster, len(shards), len(self._nodes))
        return self.info

    async def _discover(self) -> list[ClusterNode]:
        rows = await self.entry.query(csql.cluster_nodes_sql(self.cluster), database="default")
        if not rows:
            names = [str(r["cluster"]) for r in await self.entry.query(csql.cluster_names_sql(), database="default")]
            raise ConfigError(
                f"cluster {self.cluster!r} is not defined on ClickHouse at {self._target.display()} "
                f"(its <remote_servers> has: {', '.join(names) or 'none'})"
            )
        return parse_nodes(rows)

    def _node_sink(self, url: str) -> HttpSink:
        spec = dataclasses.replace(self._target.spec, base_url=url)
        return HttpSink(dataclasses.replace(self._target, spec=spec))

    async def _reach(self, node: ClusterNode, sink: HttpSink, named: bool) -> ServerInfo:
        how = "at its --node URL" if named else "over HTTP at the target's port (else name it with --node)"
        try:
            return await sink.connect()
        except TargetError as exc:
            raise type(exc)(
                f"cluster {self.cluster!r} node {node.host} (shard {node.shard}), reached {how}: {exc}", exc.code
            ) from None

    async def _has_ddl_queue(self) -> bool:
        """ON CLUSTER and replication need ZooKeeper/Keeper; without it (18.16 out of the box) DDL goes node by node."""
        try:
            await self.entry.query(csql.ddl_queue_probe_sql(), database="default")
        except TargetError:
            return False
        return True

    # -- what vector/cluster.py needs -------------------------------------------------------------------------
    @property
    def all_up(self) -> bool:
        return len(self._nodes) == self._members

    def shard_sinks(self) -> list[HttpSink]:
        """One live replica per shard: where a query of the shard's local table goes."""
        return [replicas[0] for replicas in self._replicas]

    def mutation_sinks(self) -> list[HttpSink]:
        """Where an ALTER of `{table}_local` runs: once per shard when replicated (it replicates), else every node."""
        return self.shard_sinks() if self.replicated else list(self._nodes.values())

    def node_name(self, sink: HttpSink) -> str:
        """`host:port` of a node's HTTP endpoint, for messages (the entry's if `sink` is none of the nodes)."""
        url = next((u for u, s in self._nodes.items() if s is sink), self._target.spec.base_url)
        return urlsplit(url).netloc

    # -- tables -----------------------------------------------------------------------------------------------
    async def ensure_table(self, ref: TableRef) -> None:
        """Create the local tables and the Distributed table everywhere, then check every live node's tables."""
        setup = TableSetup(
            cluster=self.cluster,
            zk_path=self._zk_path,
            target=self._target,
            entry=self.entry,
            nodes=self._nodes,
            replicated=self.replicated,
            on_cluster=self.on_cluster and self.all_up,
            max_replicas=max(self._replica_count),
        )
        await ensure_tables(setup, ref, DEDUP_WINDOW if self.info.dedup_token else None)
        if self.replicated and not self.info.dedup_token:
            await self._read_deleted(csql.local_ref(ref))

    async def _read_deleted(self, local: TableRef) -> None:
        """Ranges an earlier run deleted on any shard: their rows must go with deduplication off here too, or a
        shard whose replicas still remember the first run's identical blocks drops them (a run stopped between a
        delete and its resend, then rerun, lost those rows that way)."""
        for replicas in self._replicas:
            rows = await replicas[0].query(csql.delete_mutations_sql(local))
            for first, last in csql.deleted_ranges([str(r["command"]) for r in rows]):
                self._deleted.add(first, last)

    # -- data -------------------------------------------------------------------------------------------------
    async def _on_shard(self, pos: int, call: Callable[[HttpSink], Awaitable[T]]) -> T:
        """`call` on the shard's first replica that answers; an uncertain insert is never sent elsewhere."""
        replicas = self._replicas[pos]
        for i, sink in enumerate(replicas):
            try:
                return await call(sink)
            except UncertainInsertError:
                raise
            except TransientTargetError as exc:
                if i == len(replicas) - 1:
                    raise
                log.warning("cluster %s shard %d: %s; trying its next replica", self.cluster, pos + 1, exc)
        raise AssertionError("unreachable")

    async def _sender(self, sink: HttpSink, first_id: int) -> HttpSink:
        """`sink`, or for rows of a range this sink deleted on a replicated cluster without dedup tokens, a clone
        that sends them with `insert_deduplicate=0`. Replicated tables drop a block identical to a recent one: that
        makes a resent block after an uncertain insert a no-op (keep it), but would swallow the rows of a deleted
        range sent again."""
        if self.info.dedup_token or not self.replicated or first_id not in self._deleted:
            return sink
        clone = self._fresh.get(id(sink))
        if clone is None:
            url = next((u for u, s in self._nodes.items() if s is sink), self._target.spec.base_url)
            clone = self._node_sink(url)
            await clone.connect()
            clone.insert_extra = {**sink.insert_extra, "insert_deduplicate": 0}
            self._fresh[id(sink)] = clone
        return clone

    async def insert(
        self,
        ref: TableRef,
        segment: SegmentPlan,
        blocks: AsyncIterator[Piece],
        token: str | None,
        query_id: str | None = None,
    ) -> None:
        if self._mode == "distributed":
            try:
                sender = await self._sender(self.entry, segment.first_id)
                await sender.insert(ref, segment, blocks, token, query_id)
            except TargetError as exc:
                if exc.retriable or exc.code not in REMOTE_NODE_CODES:
                    raise
                # a shard's node went away under the synchronous insert: some shards may have the rows, others
                # not; the pipeline counts the range and sends it again (the next attempt picks a live replica)
                raise UncertainInsertError(str(exc), exc.code) from None
            return
        pos = placement(segment.shard, segment.index, self._weights)
        sink = self._replicas[pos][self._preferred[pos]]
        try:
            sender = await self._sender(sink, segment.first_id)
            await sender.insert(csql.local_ref(ref), segment, blocks, token, query_id)
        except TransientTargetError:
            # the segment's blocks are a one-pass stream: the landing's retry re-reads them, and goes to the
            # shard's next replica
            self._preferred[pos] = (self._preferred[pos] + 1) % len(self._replicas[pos])
            raise

    async def wait_query_gone(self, query_id: str) -> None:
        """On the entry and every live node: a Distributed insert's parts run on the shards under its id as
        `initial_query_id` (18.16 has no clusterAllReplicas, so each node is asked; a node that refuses
        connections runs nothing: a dead member must not stall the others)."""
        await all_of([gone_or_down(s, query_id) for s in self._senders(fresh=False)])

    async def count_range(self, ref: TableRef, first_id: int, last_id: int) -> int:
        return await remote_read(self.entry.count_range(ref, first_id, last_id))

    async def delete_range(self, ref: TableRef, first_id: int, last_id: int) -> None:
        local = csql.local_ref(ref)
        if self.replicated:
            shards = range(len(self._replicas))
            await all_of([self._refuse_while_down(pos, local, first_id, last_id) for pos in shards])
            # marked before any shard deletes: if one shard's delete runs and another's fails, the range is sent
            # again, and the shard that deleted would drop the resent blocks as duplicates of its first ones
            self._deleted.add(first_id, last_id)
            await all_of([self._replicated_delete(pos, local, first_id, last_id) for pos in shards])
            return
        await all_of([s.delete_range(local, first_id, last_id) for s in self._nodes.values()])

    async def _replicated_delete(self, pos: int, local: TableRef, first_id: int, last_id: int) -> None:
        """One ALTER DELETE on the shard's first replica (it replicates), then a bounded wait for it there.

        Refused as retriable while any replica of the shard is down: a replica killed mid-load may hold parts
        nobody else has fetched, so a count that misses rows there is no reason to delete and resend (the resent
        rows would come back twice when it returns). The load fails retriably; a rerun once the replica is back
        finishes. A mutation only touches blocks numbered before it, so the range sent again is never deleted.
        """
        sink = self._replicas[pos][0]
        await self._refuse_while_down(pos, local, first_id, last_id)
        await sink.execute(delete_range_sql(local, first_id, last_id))
        deadline = time.monotonic() + REPLICATED_DELETE_WAIT
        delay = 0.05
        while int((await sink.query(pending_mutations_sql(local)))[0]["n"]) > 0:
            if time.monotonic() > deadline:
                log.warning(
                    "cluster %s: delete of ids %d..%d in %s still pending after %.0f s (a replica is down or "
                    "behind); it completes when the replica catches up, and cannot touch rows sent after it",
                    self.cluster,
                    first_id,
                    last_id,
                    local.key,
                    REPLICATED_DELETE_WAIT,
                )
                return
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)

    async def _refuse_while_down(self, pos: int, local: TableRef, first_id: int, last_id: int) -> None:
        """Retriable refusal while any replica of the shard is down (see `_replicated_delete`)."""
        sink = self._replicas[pos][0]
        refusal = (
            f"cluster {self.cluster} shard {pos + 1}: not deleting ids {first_id}..{last_id} of {local.key} while "
            "a replica is down (it may hold rows the others lack); rerun once it is back"
        )
        try:
            rows = await sink.query(csql.replica_health_sql(local))
        except TransientTargetError as exc:
            raise TransientTargetError(f"{refusal}: {exc}", exc.code) from None
        if (rows and csql.replicas_down(rows)) or len(self._replicas[pos]) < self._replica_count[pos]:
            raise TransientTargetError(refusal)

    async def query(self, sql: str, settings: dict[str, str | int] | None = None) -> list[dict[str, Any]]:
        return await remote_read(self.entry.query(sql, settings))

    async def execute(self, sql: str, settings: dict[str, str | int] | None = None) -> None:
        await self.entry.execute(sql, settings)

    @property
    def bytes_sent(self) -> int:
        """Insert body bytes on the wire over every sink this one sends through (entry, nodes, dedup-off clones)."""
        return sum(s.bytes_sent for s in self._senders(fresh=True))

    def _senders(self, fresh: bool) -> list[HttpSink]:
        """The entry and every live node once each (and the dedup-off clones if `fresh`)."""
        sinks = [self.entry, *self._nodes.values(), *(self._fresh.values() if fresh else ())]
        return list({id(s): s for s in sinks}.values())

    async def close(self) -> None:
        for sink in [self.entry, *self._nodes.values(), *self._fresh.values()]:
            await sink.close()


__all__ = ["ClusterNode", "ClusterSink", "all_of", "node_base_url", "placement"]
