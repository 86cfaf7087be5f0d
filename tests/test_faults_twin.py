"""Issue #19, bug 2: an ingester killed after a segment's last byte was sent, before the server answered.

The killed run's INSERT still runs on the server (reading, squashing, writing the part) when the next run counts the
segment's id range: it saw 0 rows and sent the segment again, and both committed (18.16 has no dedup token). The
moment is made deterministic by a loopback proxy (tests/hold_proxy.py) that forwards one INSERT's whole body but
its last bytes, which reach the server only HOLD_SECONDS after the kill (or once the rerun has ended): a server
slowed by a big segment. The rerun starts at once and must land every row exactly once.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cluster26_fixtures import start_cluster26
from exact import assert_table_equals, expected_rows, server_table
from hold_proxy import HoldProxy

HOLD_SECONDS = 4.0
"""How long the server is kept from finishing a dead run's INSERT while the rerun goes on."""


def load_args(
    src: Path, url: str, db: str, ledger: Path, shards: str = "0-1", segment_rows: int = 2000, *extra: str
) -> list[str]:
    """Segments of 2,000 rows (~2.2 MB bodies at dim 128: 18.16 registers an HTTP INSERT in system.processes only
    once it has read the first MiB of its body), in 500-row blocks; retries quick."""
    return ["run", "--source", str(src), "--shards", shards, "--target", url, "--database", db, "--dim", "128",
            "--batch-rows", "500", "--segment-rows", str(segment_rows), "--no-progress", "--state", str(ledger),
            "--max-retries", "30", "--retry-max-seconds", "1", *extra]  # fmt: skip


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ingest", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **(env or {})},
    )


def kill_after_last_byte_then_rerun(args: list[str], proxy: HoldProxy, env: dict[str, str] | None = None) -> str:
    """Run until the proxy holds a whole INSERT body, kill -9 the run, rerun AT ONCE; the held INSERT reaches the
    server only HOLD_SECONDS later (or when the rerun ended): the rerun must neither count it missing nor send it
    again. Returns the rerun's stderr (it must exit 0)."""
    first = start(args, env)
    held = False
    try:
        held = proxy.held.wait(120)
    finally:
        first.kill()
        _out, first_err = first.communicate()
    assert held, f"no INSERT body was held (exit {first.returncode}): {first_err[-2000:]}"
    rerun = start(args, env)
    with contextlib.suppress(subprocess.TimeoutExpired):
        rerun.wait(timeout=HOLD_SECONDS)
    proxy.release()
    assert proxy.answered.wait(60), "the server never answered the held INSERT"
    _out, err = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, err
    assert "Traceback" not in err
    return err


def test_ingester_killed_after_a_segments_last_byte_does_not_land_it_twice(
    make_shards: Any, server: Any, server_db: str, tmp_path: Path
) -> None:
    src = make_shards([0, 1], rows=6000, dim=128)
    proxy = HoldProxy(server.http_port, hold=2)
    try:
        kill_after_last_byte_then_rerun(load_args(src, proxy.url, server_db, tmp_path / "ledger.json"), proxy)
    finally:
        proxy.close()
    assert_table_equals(server_table(server, server_db), expected_rows(src, [0, 1]))


def test_on_a_cluster_the_distributed_insert_of_a_dead_run_is_waited_for(make_shards: Any, tmp_path: Path) -> None:
    """The same on a 2-shard 26.9 cluster, inserting through the Distributed table: the dead run's INSERT runs on
    the entry (and then on the shards as `initial_query_id`); every node is asked before the range is counted."""
    cluster = start_cluster26(tmp_path / "cluster")
    proxy = HoldProxy(cluster.entry.http_port, hold=2)
    try:
        src = make_shards([0, 1], rows=6000, dim=128)
        extra = ["--cluster", cluster.name, *cluster.node_flags()]
        args = load_args(src, proxy.url, "twin", tmp_path / "ledger.json", "0-1", 2000, *extra)
        kill_after_last_byte_then_rerun(args, proxy, cluster.env())
        proxy.close()
        assert_table_equals(server_table(cluster.entry, "twin"), expected_rows(src, [0, 1]))
        on_nodes = [int(n.query("SELECT count() FROM twin.laion_local")) for n in cluster.nodes]
        assert sum(on_nodes) == 12_000 and min(on_nodes) > 0
    finally:
        proxy.close()
        cluster.stop()
