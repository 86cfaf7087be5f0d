"""Fixtures that start a real loopback clickhouse-server (Debian's 18.16), as DESIGN.md §2 describes.

`ch_server` (session) is one server for the whole test run; `ch_db` (function) is a fresh database in it.
`start_clickhouse(dir, extra_config)` starts another one (e.g. a node of a 2-node cluster test).
Fault tests may `stop()` / `kill()` / `start()` the server; `ch_db` restarts it if a test left it down.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from loopback_server import LoopbackServer, session_server

SERVER_BIN = Path("/usr/sbin/clickhouse-server")
CONFIG_DIR = Path("/etc/clickhouse-server")
INGEST_USER = "ingest"
READER_USER = "reader"
START_TIMEOUT = 60.0


def server_available() -> str | None:
    """None when a server can be started here, else the reason to skip."""
    if not SERVER_BIN.exists():
        return f"{SERVER_BIN} is not installed (apt-get install clickhouse-server)"
    for name in ("config.xml", "users.xml"):
        if not (CONFIG_DIR / name).exists():
            return f"{CONFIG_DIR / name} is missing"
    return None


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports that were free a moment ago (all held open together so they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _set(root: ET.Element, path: str, value: str) -> None:
    node = root.find(path)
    if node is None:
        parent_path, _, tag = path.rpartition("/")
        parent = root.find(parent_path) if parent_path else root
        assert parent is not None, path
        node = ET.SubElement(parent, tag)
    node.text = value


def write_config(root_dir: Path, password: str, extra_config: str = "", reader_password: str = "") -> Path:
    """Copy the packaged config.xml/users.xml into `root_dir`, pointed at private dirs; returns config.xml."""
    conf_dir = root_dir / "etc"
    data = root_dir / "data"
    logs = root_dir / "log"
    for d in (conf_dir, data, logs):
        d.mkdir(parents=True, exist_ok=True)
    tree = ET.parse(CONFIG_DIR / "config.xml")
    cfg = tree.getroot()
    _set(cfg, "path", f"{data}/")
    _set(cfg, "tmp_path", f"{data}/tmp/")
    _set(cfg, "user_files_path", f"{data}/user_files/")
    _set(cfg, "format_schema_path", f"{data}/format_schemas/")
    _set(cfg, "logger/log", str(logs / "clickhouse-server.log"))
    _set(cfg, "logger/errorlog", str(logs / "clickhouse-server.err.log"))
    _set(cfg, "logger/level", "information")
    _set(cfg, "users_config", str(conf_dir / "users.xml"))
    for node in cfg.findall("listen_host"):
        cfg.remove(node)  # the command line sets 127.0.0.1; `::` would reach beyond loopback
    if extra_config.strip():
        extra = ET.fromstring(f"<extra>{extra_config}</extra>")
        for child in list(extra):
            for old in cfg.findall(child.tag):
                cfg.remove(old)
            cfg.append(child)
    tree.write(conf_dir / "config.xml", encoding="utf-8", xml_declaration=True)

    users_tree = ET.parse(CONFIG_DIR / "users.xml")
    users = users_tree.getroot().find("users")
    assert users is not None
    default = users.find("default")
    assert default is not None
    ingest = ET.SubElement(users, INGEST_USER)
    ET.SubElement(ingest, "password").text = password  # ElementTree escapes XML specials
    networks = ET.SubElement(ingest, "networks")
    ET.SubElement(networks, "ip").text = "127.0.0.1"
    ET.SubElement(networks, "ip").text = "::1"
    ET.SubElement(ingest, "profile").text = "default"
    ET.SubElement(ingest, "quota").text = "default"
    reader = ET.SubElement(users, READER_USER)  # read-only (readonly=2: reads and per-query settings)
    ET.SubElement(reader, "password").text = reader_password
    ET.SubElement(ET.SubElement(reader, "networks"), "ip").text = "127.0.0.1"
    ET.SubElement(reader, "profile").text = READER_USER
    ET.SubElement(reader, "quota").text = "default"
    profiles = users_tree.getroot().find("profiles")
    assert profiles is not None
    ET.SubElement(ET.SubElement(profiles, READER_USER), "readonly").text = "2"
    users_tree.write(conf_dir / "users.xml", encoding="utf-8", xml_declaration=True)
    return conf_dir / "config.xml"


@dataclass
class ServerHandle(LoopbackServer):
    """One clickhouse-server process on 127.0.0.1 and everything a test needs to reach or disturb it."""

    root: Path
    http_port: int
    tcp_port: int
    interserver_port: int
    password: str = field(repr=False)
    user: str = INGEST_USER
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    """Listen address: another loopback address (127.0.0.2) lets two nodes share one HTTP port."""
    reader_password: str = field(repr=False, default="")

    @property
    def config(self) -> Path:
        return self.root / "etc" / "config.xml"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start (or restart, same data dir and ports) and wait until GET /ping answers."""
        if self.running:
            return
        self._spawn(
            [
                str(SERVER_BIN),
                f"--config-file={self.config}",
                "--",
                f"--http_port={self.http_port}",
                f"--tcp_port={self.tcp_port}",
                f"--listen_host={self.host}",
                f"--interserver_http_port={self.interserver_port}",
            ],
            self.root / "log" / "stdout.log",
            timeout,
        )

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's error log and stdout, for failure messages."""
        parts = []
        for name in ("clickhouse-server.err.log", "stdout.log"):
            path = self.root / "log" / name
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(parts) or "(no server log written)"


def start_clickhouse(
    tmpdir: Path,
    extra_config: str = "",
    password: str | None = None,
    host: str = "127.0.0.1",
    ports: tuple[int, int, int] | None = None,
) -> ServerHandle:
    """Start a server in `tmpdir` on free ports; `extra_config` XML elements replace/extend config.xml's.

    `host` is the listen address (a loopback one); `ports` fixes (http, tcp, interserver) instead of free ones.
    """
    reason = server_available()
    if reason is not None:
        pytest.skip(reason)
    tmpdir.mkdir(parents=True, exist_ok=True)
    pw = password if password is not None else "pw-" + secrets.token_urlsafe(12)
    reader_pw = "rd-" + secrets.token_urlsafe(12)
    write_config(tmpdir, pw, extra_config, reader_pw)
    http_port, tcp_port, inter_port = ports if ports is not None else free_ports(3)
    handle = ServerHandle(tmpdir, http_port, tcp_port, inter_port, pw, host=host, reader_password=reader_pw)
    handle.start()
    return handle


@pytest.fixture(scope="session")
def ch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """One clickhouse-server for the session; skipped (with the reason) where the binary is missing."""
    yield from session_server(tmp_path_factory.mktemp("clickhouse"), server_available(), start_clickhouse)


@pytest.fixture
def ch_db(ch_server: ServerHandle) -> Iterator[str]:
    """A fresh database name per test (created; dropped afterwards). Restarts the server if a test left it down."""
    yield from fresh_database(ch_server)


def fresh_database(handle: Any) -> Iterator[str]:
    """A database made for one test and dropped after it, on a server restarted if a test left it down."""
    if not handle.running:
        handle.start()
    name = f"t_{uuid.uuid4().hex[:12]}"
    handle.query(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        if not handle.running:
            handle.start()
        with contextlib.suppress(RuntimeError, OSError):
            handle.query(f"DROP DATABASE IF EXISTS {name}")


# -- ClickHouse 26.9 (from chdb-core) beside 18.16: the `server` parameter ----------------------------------------


@pytest.fixture(scope="session")
def ch26_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One ClickHouse 26.9 server (chdb-core's LocalServer listening on loopback) for the session."""
    from chdb_server import chdb_available, start_ch26

    yield from session_server(tmp_path_factory.mktemp("ch26"), chdb_available(), start_ch26)


SERVERS = ["18.16", "26.9"]
"""The real servers every HTTP test runs on: Debian's 18.16 and 26.9 from chdb-core (DESIGN.md §3c)."""


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest) -> Any:
    """A running server of each version in turn (18.16's ServerHandle, 26.9's Ch26Handle: the same surface)."""
    name = "ch_server" if request.param == "18.16" else "ch26_server"
    handle = request.getfixturevalue(name)
    if not handle.running:
        handle.start()
    return handle


@pytest.fixture
def server_db(server: Any) -> Iterator[str]:
    """A fresh database in `server` per test (dropped afterwards)."""
    yield from fresh_database(server)


def server_version(handle: Any) -> str:
    """Which kind ("18.16" or "26.9") of server a `server` handle is."""
    return str(getattr(handle, "version", "18.16"))


NO_VECTOR_1816 = "18.16 has no vector_similarity index and no cosineDistance (both need ClickHouse >= 25.8)"
NO_DEDUP_TOKEN_1816 = "18.16 has no insert_deduplication_token (22.2+): a retried insert there is found by counting"
NO_ZSTD_ENCODING_1816 = "18.16 has no Content-Encoding: zstd (21.1+): it gets ClickHouse's framing with decompress=1"
NO_ASYNC_INSERT_1816 = "18.16 has no async_insert setting (21.11+): nothing to turn off"


def servers_with(absent: dict[str, str]) -> list[Any]:
    """`server` parameters (use with indirect=True), each version in `absent` skipped with its stated reason."""
    return [
        pytest.param(v, id=v, marks=pytest.mark.skip(reason=absent[v])) if v in absent else pytest.param(v, id=v)
        for v in SERVERS
    ]
