"""`daemon --serve`: one process loads new shards and answers clip-retrieval searches on the growing table."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemon_proc import DaemonProc
from server_fixtures import free_ports

from ingest.stages.synth import SynthSpec, write_shard

STRIDE = 10_000_000
ROOT = Path(__file__).resolve().parent.parent


def knn(port: int, vector: np.ndarray) -> Any:
    body = json.dumps({"embedding_input": vector.tolist(), "modality": "image", "num_images": 5}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/knn-service", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def first_id_becomes(port: int, vector: np.ndarray, want: int, d: DaemonProc) -> None:
    end = time.monotonic() + 120
    got: Any = None
    while time.monotonic() < end:
        assert d.proc.poll() is None, d.logs()
        try:
            got = knn(port, vector)
        except (urllib.error.URLError, ConnectionError):
            got = None
        if got and got[0]["id"] == want:
            return
        time.sleep(0.3)
    raise AssertionError(f"row {want} never came first: {got}\n{d.logs()}")


def test_daemon_serve_answers_searches_on_shards_it_loads(
    tmp_path: Path, make_shards: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the daemon runs in tmp_path: import this checkout's ingest
    src = make_shards([0], rows=2000)
    port = free_ports(1)[0]
    d = DaemonProc(tmp_path, src, f"chdb:{tmp_path / 'db'}", "--serve", "--serve-port", str(port))
    try:
        v0 = np.load(src / "img_emb" / "img_emb_0.npy").astype(np.float32)
        first_id_becomes(port, v0[17], 17, d)
        write_shard(src, 1, SynthSpec(rows=1500, seed=9))
        v1 = np.load(src / "img_emb" / "img_emb_1.npy").astype(np.float32)
        first_id_becomes(port, v1[42], STRIDE + 42, d)  # loaded after the service started: refreshed, found
        assert d.terminate() == 0
        assert "daemon: stopped cleanly (ledger flushed)" in d.messages()
    finally:
        d.close()
