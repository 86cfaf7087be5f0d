"""The daemon as tests run it: `python -m ingest daemon` from this checkout on a free loopback port, its logs in a
file, its /metrics read with prometheus_client's parser; the `daemons` fixture stops every one it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_fixtures import free_ports

WAIT_LIMIT = 120.0
"""Guard against a hung daemon only (never an assertion about speed)."""
CHECKOUT = str(Path(__file__).resolve().parents[1])


def checkout_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a `python -m ingest` run from another directory: the checkout under test first on
    sys.path (else an installed `ingest` package would be the code that runs)."""
    path = os.pathsep.join(p for p in (CHECKOUT, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **(extra or {}), "PYTHONPATH": path}


class DaemonProc:
    """`python -m ingest daemon ...` with logs captured to a file (a full pipe would stall it)."""

    def __init__(
        self,
        workdir: Path,
        source: Path | str,
        target: str,
        *extra: str,
        drain: float = 10.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_ports(1)[0]
        self.drain = drain
        self.log_path = workdir / f"daemon-{self.port}.log"
        args = [
            sys.executable, "-m", "ingest", "daemon", "--source", str(source), "--target", target,
            "--poll-seconds", "1", "--http-host", "127.0.0.1", "--http-port", str(self.port),
            "--drain-seconds", str(drain), "--log-format", "json", *extra,
        ]  # fmt: skip
        self._log = self.log_path.open("wb")
        full_env = checkout_env({**(env or {}), "PYTHONUNBUFFERED": "1"})
        self.proc = subprocess.Popen(args, cwd=workdir, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    def get(self, path: str) -> tuple[int, str, str]:
        """(status, content type, body) of a GET on the daemon's loopback port."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.headers.get("Content-Type", ""), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read().decode()

    def metrics(self) -> dict[str, float]:
        """Samples by name{labels} from /metrics, parsed with prometheus_client's own parser."""
        try:
            status, _, body = self.get("/metrics")
        except (urllib.error.URLError, ConnectionError):
            return {}
        assert status == 200
        out = {}
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def wait_for(self, what: str, cond: Callable[[dict[str, float]], bool]) -> dict[str, float]:
        end = time.monotonic() + WAIT_LIMIT
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited ({self.proc.returncode}) while waiting for {what}:\n{self.logs()}")
            m = self.metrics()
            if m and cond(m):
                return m
            time.sleep(0.1)
        pytest.fail(f"daemon never reached: {what}\n{self.logs()}")

    def terminate(self) -> int:
        """SIGTERM, then the exit code; the daemon must be gone within its --drain-seconds (+ teardown slack)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=self.drain + 3)
        except subprocess.TimeoutExpired:
            pytest.fail(f"daemon still running {self.drain + 3:g} s after SIGTERM:\n{self.logs()}")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def messages(self) -> list[str]:
        return [orjson.loads(line)["msg"] for line in self.logs().splitlines() if line.strip()]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def daemons() -> Iterator[Callable[..., DaemonProc]]:
    started: list[DaemonProc] = []

    def start(*args: object, **kw: Any) -> DaemonProc:
        d = DaemonProc(*args, **kw)  # type: ignore[arg-type]
        started.append(d)
        return d

    yield start
    for d in started:
        d.close()


ROWS = "laion_ingest_rows_inserted_total"
DONE = 'laion_ingest_shards_total{status="done"}'
QUARANTINED = 'laion_ingest_shards_total{status="quarantined"}'
LAST_POLL = "laion_ingest_last_poll_timestamp_seconds"
