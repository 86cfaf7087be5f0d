"""Run `python -m ingest serve` as a subprocess on a free loopback port, and clip-retrieval's real ClipClient.

ClipClient is loaded from the installed clip-retrieval 2.45.0 wheel BY FILE PATH: importing the package would pull
torch, faiss and flask; `clip_client.py` alone needs only `requests`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from server_fixtures import free_ports

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 90.0


def clip_retrieval_dir() -> Path | None:
    spec = importlib.util.find_spec("clip_retrieval")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def load_clip_client() -> ModuleType:
    """clip_retrieval/clip_client.py as a module of its own."""
    where = clip_retrieval_dir()
    if where is None:
        raise RuntimeError("clip-retrieval is not installed: pip install --no-deps clip-retrieval==2.45.0")
    spec = importlib.util.spec_from_file_location("clip_client_2_45", where / "clip_client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def post(self, path: str, body: bytes | dict[str, Any] | list[Any], headers: dict[str, str] | None = None) -> Reply:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {}, method="POST")
        return fetch(req)

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Reply:
        return fetch(urllib.request.Request(self.url + path, headers=headers or {}, method=method))


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def fetch(req: urllib.request.Request) -> Reply:
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return Reply(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers), exc.read())


def start_serve(args: list[str], log: Path, env: dict[str, str] | None = None) -> Served:
    """Start the service and wait until /indices-list answers; raise with its log if it exits first."""
    port = free_ports(1)[0]
    out = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", "serve", "--port", str(port), *args],
        cwd=ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    out.close()
    served = Served(proc, port, log)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}:\n{served.log_text()}")
        with contextlib.suppress(OSError):
            if served.get("/indices-list").status == 200:
                return served
        time.sleep(0.2)
    stop_serve(served)
    raise RuntimeError(f"serve did not answer within {START_TIMEOUT:.0f}s:\n{served.log_text()}")


def stop_serve(served: Served) -> None:
    if served.proc.poll() is None:
        os.kill(served.proc.pid, signal.SIGTERM)
        try:
            served.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(served.proc.pid, signal.SIGKILL)
            served.proc.wait(timeout=30)


@contextlib.contextmanager
def serving(args: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[Served]:
    served = start_serve(args, log, env)
    try:
        yield served
    finally:
        stop_serve(served)
