"""Kubernetes Indexed-Job style workers: disjoint deterministic slices, run in parallel, exact union."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from exact import assert_table_equals, expected_rows, server_table


def test_two_workers_in_parallel_load_everything_once(
    make_shards: Any,
    server: Any,
    server_db: str,
    tmp_path: Path,
) -> None:
    src = make_shards(range(5), rows=3000, dim=64)
    procs = []
    for index in (0, 1):
        args = [
            "run",
            "--source",
            str(src),
            "--shards",
            "0-4",
            "--target",
            server.http_url,
            "--database",
            server_db,
            "--dim",
            "64",
            "--batch-rows",
            "700",
            "--no-progress",
            "--worker-count",
            "2",
            "--state",
            str(tmp_path / f"ledger-{index}.json"),
        ]
        env = {"JOB_COMPLETION_INDEX": str(index)} if index == 1 else {}
        if index == 0:
            args += ["--worker-index", "0"]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "ingest", *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, **env},
            )
        )
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    # worker 0 takes shards 0, 2, 4; worker 1 (index from JOB_COMPLETION_INDEX) takes 1, 3
    assert "done: 3 shards, 9,000 rows inserted" in outs[0][0]
    assert "done: 2 shards, 6,000 rows inserted" in outs[1][0]
    assert_table_equals(server_table(server, server_db), expected_rows(src, [0, 1, 2, 3, 4]))
