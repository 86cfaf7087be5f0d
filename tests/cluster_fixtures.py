"""ZooKeeper and a 2-shard × 2-replica cluster of real 18.16 servers on loopback (DESIGN.md §3b).

`start_zookeeper(dir)` runs Debian's ZooKeeper 3.8 (java … QuorumPeerMain zoo.cfg) on 127.0.0.1 at a free port and
polls `ruok`; `ReplicatedCluster` is four clickhouse-servers, all on 127.0.0.1 with distinct ports (18.16 finds its
own cluster entry by local address + TCP port), each with `<zookeeper>`, `<macros>` and `<remote_servers>`.
Everything started here is stopped by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from loopback_server import LoopbackCluster
from server_fixtures import ServerHandle, free_ports, server_available, start_clickhouse

ZK_JAR = Path("/usr/share/java/zookeeper.jar")
ZK_CLASSPATH = "/usr/share/java/zookeeper.jar:/usr/share/java/*:/etc/zookeeper/conf"
ZK_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
ZK_SESSION_MS = 4000
"""ClickHouse's ZooKeeper session: short, so a replica killed -9 loses its `is_active` node soon after."""
TMP_DIR_LIFETIME = 10
"""Seconds a part's tmp_ directory may go unwritten before the cleanup thread removes it (see `cluster_xml`)."""
CLUSTER = "repl"
PASSWORD = "pw-repl"


def zookeeper_available() -> str | None:
    if not ZK_JAR.exists():
        return f"{ZK_JAR} is not installed (apt-get install zookeeper)"
    if subprocess.run(["sh", "-c", "command -v java"], capture_output=True).returncode != 0:
        return "java is not installed (apt-get install zookeeper pulls it in)"
    return server_available()


def _ruok(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"ruok")
        return s.recv(16) == b"imok"
    return False


@dataclass
class ZooKeeper:
    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "zoo.cfg"
        cfg.write_text(
            "tickTime=500\ninitLimit=10\nsyncLimit=5\n"
            f"dataDir={data}\nclientPort={self.port}\nclientPortAddress=127.0.0.1\n"
            "admin.enableServer=false\n4lw.commands.whitelist=ruok\nmaxSessionTimeout=60000\n"
        )
        out = (self.root / "zookeeper.log").open("ab")
        try:
            self.proc = subprocess.Popen(
                ["java", "-Xmx256m", "-cp", ZK_CLASSPATH, ZK_MAIN, str(cfg)],
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"zookeeper exited with {self.proc.returncode}: see {self.root / 'zookeeper.log'}")
            if _ruok(self.port):
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"zookeeper did not answer ruok within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
        self.proc = None


def cluster_xml(zk_port: int, tcp_ports: list[list[int]], shard: int, replica: int) -> str:
    """config.xml additions for one node: the coordinator, its macros, and the cluster (internal_replication)."""
    shards = "".join(
        "<shard><internal_replication>true</internal_replication>"
        + "".join(f"<replica><host>127.0.0.1</host><port>{p}</port></replica>" for p in ports)
        + "</shard>"
        for ports in tcp_ports
    )
    return (
        f"<zookeeper><node><host>127.0.0.1</host><port>{zk_port}</port></node>"
        f"<session_timeout_ms>{ZK_SESSION_MS}</session_timeout_ms></zookeeper>"
        f"<macros><shard>{shard:02d}</shard><replica>r{replica}</replica></macros>"
        f"<remote_servers><{CLUSTER}>{shards}</{CLUSTER}></remote_servers>"
        # a replica killed -9 may restart with a just-written part ZooKeeper never heard of; on tables of a few
        # parts (tests) that trips the 50% "suspicious parts" guard, so let it detach them and fetch instead
        "<merge_tree><replicated_max_ratio_of_wrong_parts>1</replicated_max_ratio_of_wrong_parts>"
        # a replica killed -9 mid-fetch leaves tmp_fetch_PART/; 18.16 removes such leftovers at startup only if
        # they are from an earlier second than the startup (a restart within the second keeps them), and until
        # then every fetch of PART fails "Directory ... already exists" (fixed upstream in 21.5). Its cleanup
        # thread removes tmp_ dirs untouched for temporary_directories_lifetime (default a day): make that seconds
        f"<temporary_directories_lifetime>{TMP_DIR_LIFETIME}</temporary_directories_lifetime>"
        "<cleanup_delay_period>1</cleanup_delay_period><cleanup_delay_period_random_add>1</cleanup_delay_period_random_add>"
        "</merge_tree>"
    )


@dataclass
class ReplicatedCluster(LoopbackCluster):
    """`grid[s][r]` = replica r of shard s (0-based); `entry` is shard 1 replica 1."""

    zk: ZooKeeper
    grid: list[list[ServerHandle]] = field(default_factory=list)
    password: str = PASSWORD

    @property
    def nodes(self) -> list[ServerHandle]:
        return [n for shard in self.grid for n in shard]

    @property
    def members(self) -> list[ServerHandle]:
        return self.nodes

    def stop(self) -> None:
        self.stop_members()
        self.zk.stop()


def start_replicated_cluster(root: Path, shards: int = 2, replicas: int = 2) -> ReplicatedCluster:
    reason = zookeeper_available()
    if reason is not None:
        pytest.skip(reason)
    (zk_port,) = free_ports(1)
    zk = ZooKeeper(root / "zk", zk_port)
    (root / "zk").mkdir(parents=True, exist_ok=True)
    zk.start()
    cluster = ReplicatedCluster(zk)
    try:
        ports = free_ports(3 * shards * replicas)
        triples = [ports[i : i + 3] for i in range(0, len(ports), 3)]
        tcp = [[triples[s * replicas + r][1] for r in range(replicas)] for s in range(shards)]

        def start(sr: tuple[int, int]) -> ServerHandle:
            s, r = sr
            http, tcp_port, inter = triples[s * replicas + r]
            return start_clickhouse(
                root / f"s{s + 1}r{r + 1}",
                cluster_xml(zk_port, tcp, s + 1, r + 1),
                password=PASSWORD,
                ports=(http, tcp_port, inter),
            )

        pairs = [(s, r) for s in range(shards) for r in range(replicas)]
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(start, sr) for sr in pairs]
        started = [f.result() for f in futures if f.exception() is None]
        if len(started) < len(pairs):
            cluster.grid = [started]  # stopped below
            next(f for f in futures if f.exception() is not None).result()
        cluster.grid = [started[s * replicas : (s + 1) * replicas] for s in range(shards)]
    except BaseException:
        cluster.stop()
        raise
    return cluster
