"""What every loopback ClickHouse server of the tests shares (Debian's 18.16 and 26.9 from chdb-core): reach it,
wait for /ping, stop it by pid, run a statement over plain HTTP (stdlib only: test plumbing independent of the
code under test). The handles add how each kind starts and where it logs."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


class LoopbackServer:
    """Mixin for a server handle with `host`, `http_port`, `tcp_port`, `user`, `root`, `proc` and `log_tail()`."""

    host: str
    http_port: int
    tcp_port: int
    user: str
    root: Path
    proc: subprocess.Popen[bytes] | None
    kind = "clickhouse-server"

    def log_tail(self, lines: int = 40) -> str:
        raise NotImplementedError

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, cmd: list[str], log: Path, timeout: float) -> None:
        """Start `cmd` in `root`, its output appended to `log`, and wait for /ping."""
        out = log.open("ab")
        try:
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C to pytest must not reach the server before we stop it
            )
        finally:
            out.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.kind} exited with status {self.proc.returncode} while starting\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.http_url}/ping", timeout=2) as resp:
                if resp.status == 200:
                    return
            time.sleep(0.1)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"{self.kind} did not answer /ping within {timeout:.0f}s\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        """Stop by pid (SIGTERM: clean; SIGKILL: a crash) and wait for the process to go."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def query(
        self, sql: str, data: bytes | None = None, user: str = "default", password: str = "", timeout: float = 60
    ) -> bytes:
        """Run one statement over HTTP."""
        params = {"query": sql} if data is not None else {}
        url = f"{self.http_url}/?{urllib.parse.urlencode(params)}"
        body = data if data is not None else sql.encode()
        req = urllib.request.Request(url, data=body, method="POST")
        req.add_header("X-ClickHouse-User", user)
        if password:
            req.add_header("X-ClickHouse-Key", password)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return bytes(resp.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"ClickHouse HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}") from None


class LoopbackCluster:
    """What the tests' clusters share (18.16 + ZooKeeper, 26.9 without): members, the entry node, the CLI flags."""

    password: str

    @property
    def members(self) -> Sequence[LoopbackServer]:
        raise NotImplementedError

    @property
    def entry(self) -> Any:
        return self.members[0]

    def env(self) -> dict[str, str]:
        return {"CLICKHOUSE_USER": self.entry.user, "CLICKHOUSE_PASSWORD": self.password}

    def node_flags(self) -> list[str]:
        """`--node 127.0.0.1:TCP=http://127.0.0.1:HTTP` for every member."""
        out: list[str] = []
        for n in self.members:
            out += ["--node", f"127.0.0.1:{n.tcp_port}={n.http_url}"]
        return out

    def stop_members(self) -> None:
        with ThreadPoolExecutor(4) as pool:  # an 18.16 shutdown takes seconds: stop all at once
            list(pool.map(lambda n: n.stop(), self.members))


def session_server(root: Path, reason: str | None, start: Callable[[Path], Any]) -> Iterator[Any]:
    """A session fixture's body: skip with `reason` if the server cannot run here, else start it in `root`, yield
    it, stop it (and remove its directory unless KEEP_CLICKHOUSE_DIR is set)."""
    if reason is not None:
        import pytest

        pytest.skip(reason)
    handle = start(root)
    try:
        yield handle
    finally:
        handle.stop()
        if os.environ.get("KEEP_CLICKHOUSE_DIR") is None:
            shutil.rmtree(root, ignore_errors=True)
