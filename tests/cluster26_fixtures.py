"""A cluster of ClickHouse 26.9 servers (from chdb-core) on loopback: N shards of one replica each.

Each node is its own process (one server per process) with `<remote_servers>` naming every node's TCP port, so
`Distributed` tables and `cluster()` / `clusterAllReplicas()` work across them. No replication: LocalServer has no
interserver port (DESIGN.md §3c); replicated tables are tested on 18.16 + ZooKeeper (tests/cluster_fixtures.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from chdb_server import Ch26Handle, cluster_xml, start_ch26
from loopback_server import LoopbackCluster
from server_fixtures import free_ports

CLUSTER26 = "two"
PASSWORD26 = "pw-26"


@dataclass
class Cluster26(LoopbackCluster):
    """`nodes[s]` = the one replica of shard s+1; `entry` is the first."""

    name: str
    nodes: list[Ch26Handle] = field(default_factory=list)
    password: str = PASSWORD26

    @property
    def members(self) -> list[Ch26Handle]:
        return self.nodes

    def stop(self) -> None:
        self.stop_members()


def start_cluster26(root: Path, shards: int = 2, name: str = CLUSTER26) -> Cluster26:
    """Start `shards` 26.9 servers that form cluster `name`; stopped by the caller (`Cluster26.stop`)."""
    ports = free_ports(2 * shards)
    pairs = [(ports[2 * i], ports[2 * i + 1]) for i in range(shards)]
    remote = cluster_xml(name, [tcp for _, tcp in pairs])
    cluster = Cluster26(name)
    try:
        with ThreadPoolExecutor(shards) as pool:
            futures = [
                pool.submit(start_ch26, root / f"s{i + 1}", remote, PASSWORD26, pair) for i, pair in enumerate(pairs)
            ]
            for f in futures:
                try:
                    cluster.nodes.append(f.result())
                except Exception:
                    cluster.stop()
                    raise
    except BaseException:
        cluster.stop()
        raise
    return cluster
