"""What every loopback ClickHouse server of the tests shares (Debian's 18.16 and 26.9 from chdb-core): reach it,
wait for /ping, stop it by pid, run a statement over plain HTTP (stdlib only: test plumbing independent of the
code under test). The handles add how each kind starts and where it logs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request


class LoopbackServer:
    """Mixin for a server handle with `host`, `http_port`, `proc` and `log_tail()`."""

    host: str
    http_port: int
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
