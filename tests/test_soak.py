"""A seeded fault soak (issue #19): `python -m ingest run` and `daemon` through a fault proxy, faults on both sides.

Short by default (CI: 30 faults a server); `--soak-faults N` or SOAK_FAULTS=N runs more, SOAK_SEED=S replays a
seed. Every run must end 0, or 4 when a fault outlived the retries (then a quiet rerun must end 0), never 1 and
never with a traceback; after every run the table is byte-exact against the source (tests/exact.py). The summary
table is printed (see it with -s) and written to a file whose path is printed.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_run import cli
from conftest import SOAK_SECONDS_PER_FAULT, soak_faults
from cpu_load import busy_cores
from daemon_proc import DONE, DaemonProc
from exact import assert_table_equals, expected_rows, server_table
from fault_proxy import FaultProxy
from server_fixtures import server_version
from soak_driver import FaultDriver, SoakStats, count_retries, max_queries_config, wait_until

from ingest.stages.synth import SynthSpec, write_shard

pytestmark = pytest.mark.soak

DB = "soak"
DIM = 64
ROWS = 6000
DAEMON_ROWS = 3000
OUTAGE_SECONDS = 15.0
BURN_SECONDS = 20.0
"""Longer than 8 retries capped at 2 s wait: the daemon's poll fails once, then the next one loads the shard."""
SEGMENT_ROWS = 1000
BODY_SPAN = SEGMENT_ROWS * 700
"""About one segment's INSERT body (dim 64, two vectors, short texts): faults land anywhere inside one."""
TRICKLE_SECONDS = 3.0
READ_TIMEOUT = 2 * TRICKLE_SECONDS
"""Above a trickle (slow is not lost: a trickled INSERT must land once, not time out). Below it, 18.16 can land a
segment twice: the client gives up, the relay still delivers the whole body, and 18.16 lists an INSERT only once
it has read 1 MiB of it, so the landing counts 0 and sends it again (seed 190301 with --read-timeout 3: ids
4000..4999 twice). Servers with insert_deduplication_token drop the second copy."""
LOAD_FLAGS = [
    "--dim", str(DIM), "--batch-rows", "250", "--segment-rows", str(SEGMENT_ROWS), "--max-retries", "8",
    "--retry-max-seconds", "2", "--read-timeout", str(READ_TIMEOUT),
]  # fmt: skip


def soak_seed() -> int:
    return int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(1, 10**6))


def start_server(version: str, root: Path) -> Any:
    """A dedicated server whose query slots the soak can exhaust (18.16 refuses at once, as 26.9 does)."""
    if version == "26.9":
        from chdb_server import chdb_available, start_ch26

        reason = chdb_available()
        if reason is not None:
            pytest.skip(reason)
        return start_ch26(root, extra_config=max_queries_config(version))
    from server_fixtures import start_clickhouse

    handle = start_clickhouse(root, extra_config=max_queries_config(version))
    handle.stop()
    users = root / "etc" / "users.xml"
    tree = ET.parse(users)
    profile = tree.getroot().find("profiles/default")
    assert profile is not None
    ET.SubElement(profile, "queue_max_wait_ms").text = "0"  # 18.16 would queue for 5 s instead of saying 202
    tree.write(users, encoding="utf-8", xml_declaration=True)
    handle.start()
    return handle


@pytest.fixture(params=["18.16", "26.9"])
def soak_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    handle = start_server(request.param, tmp_path / f"server-{request.param}")
    try:
        handle.query(f"CREATE DATABASE {DB}")
        yield handle
    finally:
        handle.stop()


@contextlib.contextmanager
def soak_rig(server: Any, seed: int) -> Iterator[tuple[FaultProxy, FaultDriver]]:
    proxy = FaultProxy(
        server.http_port,
        seed,
        body_span=BODY_SPAN,
        stall_seconds=READ_TIMEOUT + 2,
        trickle_seconds=TRICKLE_SECONDS,
        server_version=server_version(server),
    )
    proxy.start()
    driver = FaultDriver(proxy, server, random.Random(seed + 1), DB)
    driver.start()
    try:
        yield proxy, driver
    finally:
        driver.stop()
        proxy.stop()


def env_for(server: Any) -> dict[str, str]:
    return {"CLICKHOUSE_USER": server.user, "CLICKHOUSE_PASSWORD": server.password}


def check_table(server: Any, table: str, want: dict[str, Any], stats: SoakStats, label: str) -> None:
    """Byte-exact against the source; lost and duplicated rows counted for the summary."""
    got = server_table(server, DB, table)
    ids = got.column("id").to_numpy()
    uniq, counts = np.unique(ids, return_counts=True)
    stats.rows_duplicated += len(ids) - len(uniq)
    stats.rows_lost += len(np.setdiff1d(want["id"], ids))
    try:
        assert_table_equals(got, want)
    except AssertionError as exc:
        twice = uniq[counts > 1]
        where = f"; ids twice: {twice.min()}..{twice.max()} ({len(twice)})" if len(twice) else ""
        stats.failures.append(f"{label}: table not exact: {exc}{where}")


def run_once(args: list[str], server: Any, stats: SoakStats, label: str, log: Path) -> int:
    res = cli("run", *args, env=env_for(server), timeout=300)
    stats.runs += 1
    with log.open("a") as f:  # every run's stderr, for a failure's post-mortem
        f.write(f"== {label}: exit {res.returncode}\n{res.stderr}")
    stats.exits[res.returncode] += 1
    stats.retries += count_retries(res.stderr)
    bad = res.returncode not in (0, 4) or "Traceback" in res.stderr or "internal error" in res.stderr
    if bad:
        stats.failures.append(f"{label}: exit {res.returncode}: {res.stderr.strip()[-1500:]}")
    if res.returncode == 4:  # which fault outlived the retries: in the summary file, not the table
        last = [line for line in res.stderr.splitlines() if line.startswith("error:")][-1:]
        stats.notes.append(f"{label}: exit 4: {last[0] if last else res.stderr.strip()[-300:]}")
    return res.returncode


def report(stats: SoakStats, out_dir: Path, logs: Path) -> None:
    """Print the summary and write it (with the failures and why runs ended 4) next to `logs` (stderr, faults)."""
    text = stats.table()
    path = out_dir / f"soak-{stats.what}-{stats.server}-seed{stats.seed}.txt"
    path.write_text("\n".join([text, *stats.failures, *stats.notes]) + "\n")
    print(f"\n{text}\n(summary written to {path}; logs: {logs})")


def test_runs_survive_the_soak(
    soak_server: Any, make_shards: Callable[..., Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Rounds of `run` into a fresh table each, faults injected while it runs; both cores busy in about half."""
    target = soak_faults(request.config)
    seed = soak_seed()
    rng = random.Random(seed)
    src = make_shards([0, 1, 2], rows=ROWS, dim=DIM)
    want = expected_rows(src, [0, 1, 2])
    stats = SoakStats(seed=seed, server=server_version(soak_server))
    wall_limit = time.monotonic() + target * SOAK_SECONDS_PER_FAULT * 0.8
    log = tmp_path / "runs.log"
    started = time.monotonic()
    noted = 0
    with soak_rig(soak_server, seed) as (proxy, driver):
        while stats.faults < target and time.monotonic() < wall_limit:
            stats.rounds += 1
            table = driver.table = f"r{stats.rounds}"
            args = ["--source", str(src), "--shards", "0-2", "--target", f"http://127.0.0.1:{proxy.port}",
                    "--database", DB, "--table", table, "--no-progress", "--state", str(tmp_path / f"{table}.json"),
                    "--cache-dir", str(tmp_path / "cache"), *LOAD_FLAGS]  # fmt: skip
            since = proxy.now()
            burn = busy_cores(seconds=120) if rng.random() < 0.5 else contextlib.nullcontext()
            with burn:
                driver.active.set()
                code = run_once(args, soak_server, stats, f"seed {seed} round {stats.rounds}", log)
                driver.quiet()
            if code != 0:  # 4: a fault outlived the retries; a rerun (faults off) must finish the job exactly
                rerun = run_once(args, soak_server, stats, f"seed {seed} round {stats.rounds} rerun", log)
                if rerun != 0:
                    stats.failures.append(f"seed {seed} round {stats.rounds}: rerun after exit {code} ended {rerun}")
            stats.add_recovery(proxy, since, proxy.now())
            with log.open("a") as f:
                f.writelines(f"   fault {i}\n" for i in proxy.injected if i.at >= since)
                f.writelines(f"   proxy {n}\n" for n in proxy.notes[noted:])
            noted = len(proxy.notes)
            check_table(soak_server, table, want, stats, f"seed {seed} round {stats.rounds}")
            soak_server.query(f"DROP TABLE IF EXISTS {DB}.{table}")
        stats.failures += driver.errors
    stats.wall = time.monotonic() - started
    report(stats, tmp_path, log)
    assert not stats.failures, "\n".join(stats.failures)
    assert stats.faults >= target, f"only {stats.faults} faults fired in the time allowed (seed {seed})"
    assert stats.rows_lost == 0 and stats.rows_duplicated == 0


def test_daemon_survives_the_soak(
    soak_server: Any, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon under the same faults with a growing source: never exits, /readyz follows the server, /metrics
    counts retries and poll errors, the table ends exact."""
    target = soak_faults(request.config)
    seed = soak_seed()
    stats = SoakStats(seed=seed, server=server_version(soak_server), what="daemon")
    src = tmp_path / "src"
    shards = [0, 1]
    for s in shards:
        write_shard(src, s, SynthSpec(rows=DAEMON_ROWS, dim=DIM))
    for k, v in env_for(soak_server).items():
        monkeypatch.setenv(k, v)
    started = time.monotonic()
    with soak_rig(soak_server, seed) as (proxy, driver):
        driver.table = "laion"
        d = DaemonProc(tmp_path, src, f"http://127.0.0.1:{proxy.port}", "--database", DB, "--state",
                       str(tmp_path / "ledger.json"), "--cache-dir", str(tmp_path / "cache"), *LOAD_FLAGS)  # fmt: skip
        probes: list[tuple[float, int]] = []
        probing = threading.Event()
        prober = threading.Thread(target=probe_ready, args=(d, proxy, probes, probing), daemon=True)
        try:
            prober.start()
            d.wait_for("the first rows", lambda m: m.get("laion_ingest_rows_inserted_total", 0) > 0)
            driver.active.set()
            grow = random.Random(seed + 2)
            with busy_cores(seconds=BURN_SECONDS):  # both cores busy for the first BURN_SECONDS of the faults
                while stats_faults(proxy) < target and d.proc.poll() is None:  # the source grows while faults fly
                    time.sleep(grow.uniform(0.5, 2.0))
                    shards.append(len(shards))
                    write_shard(src, shards[-1], SynthSpec(rows=DAEMON_ROWS, dim=DIM))
            driver.quiet()
            assert d.proc.poll() is None, f"the daemon exited ({d.proc.returncode}):\n{d.logs()[-3000:]}"
            shards.append(len(shards))  # one more kill, long enough to fail a poll, watched by /readyz
            outage = outage_seen(
                driver, probes, lambda: write_shard(src, shards[-1], SynthSpec(rows=DAEMON_ROWS, dim=DIM))
            )
            m = d.wait_for("every shard loaded", lambda m: m.get(DONE) == len(shards))
            assert d.proc.poll() is None
            stats.add_recovery(proxy, 0.0, proxy.now())
            stats.retries = int(m.get("laion_ingest_retries_total", 0))
            poll_errors = int(m.get("laion_ingest_poll_errors_total", -1))
            stats.extra += [("poll errors", str(poll_errors)), ("/readyz", outage)]
            assert stats.retries > 0, "/metrics counted no retries under faults"
            assert poll_errors > 0, "/metrics counted no poll errors (a shard came while the server was down 15 s)"
            assert d.terminate() == 0
        finally:
            probing.set()
            d.close()
        stats.failures += driver.errors
    stats.runs, stats.rounds = 1, 1
    stats.exits[d.proc.returncode] += 1
    check_table(soak_server, "laion", expected_rows(src, shards), stats, f"seed {seed} daemon")
    stats.wall = time.monotonic() - started
    report(stats, tmp_path, d.log_path)
    assert not stats.failures, "\n".join(stats.failures)


def stats_faults(proxy: FaultProxy) -> int:
    return len(proxy.injected)


def probe_ready(d: DaemonProc, proxy: FaultProxy, probes: list[tuple[float, int]], stop: threading.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError):
            probes.append((proxy.now(), d.get("/readyz")[0]))
        time.sleep(0.2)


def outage_seen(driver: FaultDriver, probes: list[tuple[float, int]], new_shard: Callable[[], None]) -> str:
    """Kill the server once more with faults off, for longer than the retries last, and add a shard meanwhile:
    a poll fails (and is counted); /readyz must say 503 while the server is down and 200 after."""
    with driver.busy:
        new_shard()
        driver.kill9(downtime=OUTAGE_SECONDS)
    down_from, down_to = driver.down[-1]
    assert wait_until(lambda: any(t > down_to and s == 200 for t, s in probes), 60), "/readyz never ready again"
    during = [s for t, s in probes if down_from + 0.5 < t < down_to]
    assert during and all(s == 503 for s in during), f"/readyz while the server was down: {during}"
    return f"503 x{len(during)} down, 200 after"
