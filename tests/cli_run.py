"""Run the real CLI as a subprocess, the way a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ingest", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def ok(res: subprocess.CompletedProcess[str]) -> str:
    """The command's stdout, once it is known to have ended 0 without a traceback."""
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert "Traceback" not in res.stderr, res.stderr
    return res.stdout


def loaded_chdb(root: Path, *run_flags: str, rows: int = 6000) -> Path:
    """Two synthetic shards of `rows` rows (seed 11) loaded by `run` into a chdb dir under `root`; that dir."""
    from ingest.stages.synth import SynthSpec, write_shard

    for s in (0, 1):
        write_shard(root / "src", s, SynthSpec(rows=rows, seed=11))
    db = root / "db"
    ok(cli("run", "--source", str(root / "src"), "--shards", "0-1", "--target", f"chdb:{db}", "--no-progress",
           *run_flags))  # fmt: skip
    return db
