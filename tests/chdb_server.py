"""A real ClickHouse 26.9 server on loopback, started from the `chdb-core` package (DESIGN.md §3c).

chdb's one-shot `query(..., path=DIR)` runs ClickHouse's own LocalServer, which reads `./config.xml` and has
`SYSTEM START LISTEN HTTP|TCP`. So a child process `python tests/chdb_server.py WORKDIR` chdirs into WORKDIR,
starts both listeners, then blocks reading a named pipe (no CPU); `echo stop > WORKDIR/stop.fifo` ends it cleanly,
SIGTERM/SIGKILL by pid too, and the data dir survives restarts. One server per process (chdb's limit).

`Ch26Handle` has the same surface as the 18.16 `ServerHandle` (http_url, query, start, stop, kill, user,
password, log_tail), so a `server` fixture parameter can hand either to a test. What this server cannot do
(§3c): replication (no interserver port), an async-insert queue (accepted, runs synchronously).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import xml.sax.saxutils
from dataclasses import dataclass, field
from pathlib import Path

from loopback_server import LoopbackServer

INGEST_USER = "ingest"
READER_USER = "reader"
SEARCHER_USER = "searcher"
"""Reads only but may set query settings (readonly=2): what `laion-ingest serve` needs."""
STRICT_USER = "strict"
"""readonly=1: may not set query settings either."""
LOADER_USER = "loader"
"""Writes and creates tables but has no SYSTEM privilege (GRANTs in users.xml): what a DBA gives a loading job."""
START_TIMEOUT = 60.0
VERSION = "26.9"


def chdb_available() -> str | None:
    """None when a 26.9 server can be started here, else the reason to skip."""
    try:
        import chdb  # noqa: F401
    except ImportError as exc:  # pragma: no cover - chdb-core is a dependency of the project
        return f"chdb-core is not importable: {exc}"
    return None


def _users_xml(password: str, reader_password: str) -> str:
    """`default` (no password: LocalServer's own start-up session logs in as it), `ingest` with a password,
    `reader` and `searcher` (readonly=2: they read and set per-query settings, never write; `searcher` is what
    `laion-ingest serve` runs as) and `strict` (readonly=1: no settings either), sharing one password; `loader`
    (ingest's password: SELECT, INSERT, CREATE, ALTER DELETE, no SYSTEM); all from loopback only."""
    pw = xml.sax.saxutils.escape(password)
    rpw = xml.sax.saxutils.escape(reader_password)
    loop = "<networks><ip>127.0.0.1</ip><ip>::1</ip></networks>"
    return (
        "<clickhouse><users>"
        "<default><password></password><networks><ip>::/0</ip></networks><profile>default</profile>"
        "<quota>default</quota><access_management>1</access_management></default>"
        f"<{INGEST_USER}><password>{pw}</password>{loop}<profile>default</profile><quota>default</quota>"
        f"</{INGEST_USER}>"
        f"<{READER_USER}><password>{rpw}</password>{loop}<profile>readonly</profile><quota>default</quota>"
        f"</{READER_USER}>"
        f"<{SEARCHER_USER}><password>{rpw}</password>{loop}<profile>readonly</profile><quota>default</quota>"
        f"</{SEARCHER_USER}>"
        f"<{STRICT_USER}><password>{rpw}</password>{loop}<profile>strict</profile><quota>default</quota>"
        f"</{STRICT_USER}>"
        f"<{LOADER_USER}><password>{pw}</password>{loop}<profile>default</profile><quota>default</quota>"
        "<grants><query>GRANT SELECT, INSERT, CREATE DATABASE, CREATE TABLE, ALTER DELETE ON *.*</query>"
        "<query>GRANT TABLE ENGINE ON MergeTree</query></grants>"
        f"</{LOADER_USER}>"
        "</users><profiles><default/><readonly><readonly>2</readonly></readonly>"
        "<strict><readonly>1</readonly></strict></profiles>"
        "<quotas><default/></quotas></clickhouse>"
    )


@dataclass
class Ch26Handle(LoopbackServer):
    """One 26.9 server process on 127.0.0.1 and what a test needs to reach or disturb it."""

    root: Path
    http_port: int
    tcp_port: int
    password: str = field(repr=False)
    reader_password: str = field(repr=False, default="")
    user: str = INGEST_USER
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    version: str = VERSION
    extra_config: str = ""
    kind = "26.9 server"

    @property
    def fifo(self) -> Path:
        return self.root / "stop.fifo"

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "users.xml").write_text(_users_xml(self.password, self.reader_password))
        (self.root / "config.xml").write_text(
            "<clickhouse>"
            f"<listen_host>{self.host}</listen_host>"
            f"<http_port>{self.http_port}</http_port><tcp_port>{self.tcp_port}</tcp_port>"
            f"<users_config>{self.root / 'users.xml'}</users_config>"
            f"{self.extra_config}</clickhouse>"
        )

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start (or restart on the same data dir and ports) and wait until GET /ping answers."""
        if self.running:
            return
        self.write_config()
        if self.fifo.exists():
            self.fifo.unlink()
        os.mkfifo(self.fifo)
        self._spawn([sys.executable, __file__, str(self.root)], self.root / "server.log", timeout)

    def log_tail(self, lines: int = 40) -> str:
        path = self.root / "server.log"
        if not path.exists():
            return "(no server log written)"
        text = path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {path} (last {len(text)} lines)\n" + "\n".join(text)


def start_ch26(
    root: Path,
    extra_config: str = "",
    password: str | None = None,
    ports: tuple[int, int] | None = None,
) -> Ch26Handle:
    """Start a 26.9 server in `root` on free loopback ports; `extra_config` XML goes inside <clickhouse>."""
    from server_fixtures import free_ports

    http_port, tcp_port = ports if ports is not None else tuple(free_ports(2))
    handle = Ch26Handle(
        root,
        http_port,
        tcp_port,
        password if password is not None else "pw-" + secrets.token_urlsafe(12),
        reader_password="rd-" + secrets.token_urlsafe(12),
        extra_config=extra_config,
    )
    handle.start()
    return handle


def cluster_xml(name: str, tcp_ports: list[int]) -> str:
    """<remote_servers>: one shard per port, no replicas (this server cannot replicate)."""
    shards = "".join(f"<shard><replica><host>127.0.0.1</host><port>{p}</port></replica></shard>" for p in tcp_ports)
    return f"<remote_servers><{name}>{shards}</{name}></remote_servers>"


def _serve(workdir: str) -> int:
    """The child: listeners up, then block on the stop fifo (in this process: one server per process)."""
    import chdb  # noqa: F401 - chdb's import must come before the chdir (it resolves its own paths)
    import chdb._chdb as engine

    os.chdir(workdir)
    fifo = Path(workdir) / "stop.fifo"
    engine.query(
        f"SYSTEM START LISTEN HTTP; SYSTEM START LISTEN TCP; SELECT count() FROM file('{fifo}', 'LineAsString')",
        "TabSeparated",
        path=str(Path(workdir) / "data"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1]))
