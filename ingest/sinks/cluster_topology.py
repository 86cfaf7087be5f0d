"""Pure topology decisions for the cluster sink: who the members are, at which HTTP URL each is reached, which
layouts are served, where a batch goes. No I/O.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ingest.core.config import NodeEndpoint
from ingest.core.errors import ConfigError
from ingest.sinks.base import ServerInfo


@dataclass(frozen=True, slots=True)
class ClusterNode:
    """One replica of one shard as `system.clusters` names it."""

    shard: int
    weight: int
    replica: int
    host: str
    tcp_port: int

    @property
    def member(self) -> str:
        return f"{self.host}:{self.tcp_port}"


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
    """The node's HTTP endpoint by default: the target's scheme and port, the node's host."""
    parts = urlsplit(target_base_url)
    name = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{parts.scheme}://{name}:{parts.port}"


def node_urls(
    cluster: str, target_base_url: str, nodes: Sequence[ClusterNode], endpoints: Sequence[NodeEndpoint]
) -> dict[ClusterNode, str]:
    """Each member's HTTP URL: its `--node` endpoint if given, else the target's port on the member's host.

    Refused: a `--node` naming no member (a typo would silently fall back), and a host whose unnamed members
    listen on different TCP ports (one HTTP port cannot reach them all).
    """
    named = {e.key(): e.url for e in endpoints}
    members = {(n.host, n.tcp_port) for n in nodes}
    for key in named:
        if key not in members:
            listed = ", ".join(sorted({n.member for n in nodes}))
            raise ConfigError(f"--node {key[0]}:{key[1]} names no member of cluster {cluster!r} (members: {listed})")
    ports: dict[str, set[int]] = {}
    for n in nodes:
        if (n.host, n.tcp_port) not in named:
            ports.setdefault(n.host, set()).add(n.tcp_port)
    for host, seen in ports.items():
        if len(seen) > 1:
            raise ConfigError(
                f"cluster {cluster!r} lists host {host} with TCP ports {sorted(seen)}: without --node each member is "
                f"reached at the target's HTTP port, so name each one's endpoint with --node {host}:TCP_PORT=URL"
            )
    return {n: named.get((n.host, n.tcp_port)) or node_base_url(target_base_url, n.host) for n in nodes}


def check_topology(cluster: str, nodes: list[ClusterNode], insert_mode: str, replicated: bool) -> None:
    """Refuse layouts this sink cannot serve correctly, in one line each."""
    if insert_mode == "local":
        multi = sorted({n.shard for n in nodes if n.replica > 1})
        if multi and not replicated:
            raise ConfigError(
                f"--insert-mode local needs one replica per shard; cluster {cluster!r} shard {multi[0]} has more "
                "(use --insert-mode distributed)"
            )
        if sum(n.weight for n in nodes if n.replica == 1) <= 0:
            raise ConfigError(f"cluster {cluster!r} gives every shard weight 0: no shard takes inserts")


def placement(shard: int, index: int, weights: Sequence[int]) -> int:
    """Which shard (position in `weights`) takes a batch in local mode: crc32("shard:index") modulo the total
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
