"""The daemon as users run it: a subprocess on loopback, a real chdb target, shards appearing while it runs."""

from __future__ import annotations

import asyncio
import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer.main
from daemon_proc import DONE, LAST_POLL, QUARANTINED, ROWS, WAIT_LIMIT, DaemonProc, checkout_env
from prometheus_client import CONTENT_TYPE_LATEST
from server_fixtures import free_ports

from ingest.cli.app import app, register_later_commands
from ingest.core.errors import EXIT_FATAL, EXIT_USAGE, UnreachableTargetError
from ingest.daemon.backoff import BACKOFF_CAP_SECONDS, back_off, poll_wait
from ingest.daemon.service import local_signature, shards_to_load
from ingest.load.ledger import Ledger
from ingest.stages.shard import ShardFiles
from ingest.stages.synth import SynthSpec, write_shard

register_later_commands()  # the app registers index/search/daemon/... only when argv may name one


def open_chdb(db: Path) -> Any:
    """A chdb session on a data directory (only once the daemon is gone: one process per directory)."""
    from chdb import session

    return session.Session(str(db))  # type: ignore[no-untyped-call]


def read_table(db: Path) -> pa.Table:
    """The whole table in id order, from the chdb directory."""
    sess = open_chdb(db)
    try:
        res = sess.query(
            "SELECT id, url, caption, NSFW, similarity, image_embedding, text_embedding FROM default.laion ORDER BY id",
            "Arrow",
        )
        data = res.bytes() if hasattr(res, "bytes") else bytes(res)
    finally:
        sess.close()
    return pa.ipc.open_file(pa.BufferReader(data)).read_all()


def as_bytes(col: pa.ChunkedArray) -> list[bytes]:
    return col.cast(pa.binary()).to_pylist()  # type: ignore[no-any-return]


def assert_table_exact(db: Path, src: Path, shards: list[int]) -> None:
    """Ids, strings (null → ''), similarity and both embeddings equal the source files bit for bit."""
    table = read_table(db)
    offset = 0
    assert table.num_rows == sum(pq.ParquetFile(ShardFiles.in_dir(src, s).meta).metadata.num_rows for s in shards)
    for shard in shards:
        files = ShardFiles.in_dir(src, shard)
        meta = pq.read_table(files.meta)
        n = meta.num_rows
        part = table.slice(offset, n)
        offset += n
        assert part.column("id").to_numpy().tolist() == [shard * 10_000_000 + i for i in range(n)]
        for name in ("url", "caption", "NSFW"):
            want = [b"" if v is None else v.encode() for v in meta.column(name).to_pylist()]
            assert as_bytes(part.column(name)) == want, f"shard {shard} column {name}"
        sim_want = meta.column("similarity").to_numpy().astype(np.float32)
        assert part.column("similarity").to_numpy().view(np.uint32).tolist() == sim_want.view(np.uint32).tolist()
        for name, path in (("image_embedding", files.img), ("text_embedding", files.text)):
            want_vec = np.load(path).astype(np.float32)
            got = part.column(name).combine_chunks().flatten().to_numpy().reshape(want_vec.shape)
            assert np.array_equal(got.view(np.uint32), want_vec.view(np.uint32)), f"shard {shard} {name}"


def times_taken(messages: list[str], shard: int) -> int:
    """How often the daemon logged `N new shard(s): a, b, ...` listing `shard`."""
    lists = [m.split("new shard(s): ", 1)[1] for m in messages if "new shard(s): " in m]
    return sum(shard in {int(x) for x in text.split(", ")} for text in lists)


# -- whole-process tests -------------------------------------------------------------------------------------
def test_daemon_loads_new_shards_serves_health_and_stops_on_sigterm(
    tmp_path: Path, make_shards: Callable[..., Path], daemons: Callable[..., DaemonProc]
) -> None:
    src = make_shards([0], rows=3000)
    db = tmp_path / "db"
    d = daemons(tmp_path, src, f"chdb:{db}")

    d.wait_for("shard 0 loaded", lambda m: m.get(ROWS) == 3000 and m.get(DONE) == 1)
    assert d.get("/healthz")[0::2] == (200, "ok\n")
    assert d.get("/readyz")[0::2] == (200, "ready\n")
    status, ctype, _ = d.get("/metrics")
    assert (status, ctype) == (200, CONTENT_TYPE_LATEST)

    write_shard(src, 1, SynthSpec(rows=2000))  # each file is written aside and renamed into place
    m = d.wait_for("shard 1 loaded", lambda m: m.get(DONE) == 2)
    assert m[ROWS] == 5000
    assert m[QUARANTINED] == 0
    assert m[LAST_POLL] > 0

    assert d.terminate() == 0
    messages = d.messages()  # every line of --log-format json parses as JSON
    assert any(msg.startswith("SIGTERM") for msg in messages)
    assert "daemon: stopped cleanly (ledger flushed)" in messages
    assert_table_exact(db, src, [0, 1])


def test_dim_flag_sets_the_tables_dimension(
    tmp_path: Path, make_shards: Callable[..., Path], daemons: Callable[..., DaemonProc]
) -> None:
    """`--dim 64` makes a 64-d table (the daemon used to create the default 512-d one and quarantine every shard)."""
    src = make_shards([0], rows=1000, dim=64)
    db = tmp_path / "db"
    d = daemons(tmp_path, src, f"chdb:{db}", "--dim", "64")
    d.wait_for("shard 0 loaded", lambda m: m.get(DONE) == 1)
    assert d.metrics()[QUARANTINED] == 0
    assert d.terminate() == 0
    assert_table_exact(db, src, [0])


def test_sigterm_during_long_ingest_then_run_completes_exactly(
    tmp_path: Path, make_shards: Callable[..., Path], daemons: Callable[..., DaemonProc]
) -> None:
    src = make_shards([0], rows=8_000)
    db = tmp_path / "db"
    d = daemons(tmp_path, src, f"chdb:{db}", "--batch-rows", "100", "--segment-rows", "500", drain=5.0)
    d.wait_for("first rows", lambda m: m.get(ROWS, 0) > 0)

    assert d.terminate() == 0
    assert any(msg.startswith("SIGTERM") for msg in d.messages())
    landed = read_table(db).num_rows
    assert 0 < landed < 8_000, "the stop must have landed mid-shard"

    run = subprocess.run(
        [sys.executable, "-m", "ingest", "run", "--source", str(src), "--shards", "0", "--target", f"chdb:{db}",
         "--batch-rows", "100", "--segment-rows", "500", "--no-progress"],
        cwd=tmp_path, capture_output=True, text=True, timeout=WAIT_LIMIT, env=checkout_env(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert_table_exact(db, src, [0])


def test_quarantined_shard_is_retried_only_when_its_files_change(
    tmp_path: Path, make_shards: Callable[..., Path], daemons: Callable[..., DaemonProc]
) -> None:
    src = make_shards([0, 1], rows=1000)
    img1 = ShardFiles.in_dir(src, 1).img
    os.truncate(img1, img1.stat().st_size // 2)  # a truncated download
    db = tmp_path / "db"
    d = daemons(tmp_path, src, f"chdb:{db}")

    m = d.wait_for("shard 0 done, shard 1 quarantined", lambda m: m.get(DONE) == 1 and m.get(QUARANTINED) == 1)
    polled = m[LAST_POLL]
    m = d.wait_for("two more polls", lambda m: m[LAST_POLL] > polled + 1.5)
    assert m[QUARANTINED] == 1, "unchanged files must not be tried again"
    assert times_taken(d.messages(), 1) == 1

    write_shard(src, 1, SynthSpec(rows=1000))  # the mirror fixed it: new size and mtime
    m = d.wait_for("shard 1 loaded after the fix", lambda m: m.get(DONE) == 2)
    assert m[QUARANTINED] == 1
    assert m[ROWS] == 2000
    assert d.terminate() == 0
    assert_table_exact(db, src, [0, 1])


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served over loopback HTTP (HEAD and GET), like a LAION mirror."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


def test_http_mirror_shards_are_found_among_candidates(
    tmp_path: Path, mirror: tuple[Path, str], daemons: Callable[..., DaemonProc]
) -> None:
    root, url = mirror
    write_shard(root, 0, SynthSpec(rows=700))
    db = tmp_path / "db"
    d = daemons(tmp_path, url, f"chdb:{db}", "--shards", "0-3", "--cache-dir", str(tmp_path / "cache"))
    d.wait_for("shard 0 loaded", lambda m: m.get(DONE) == 1)
    write_shard(root, 2, SynthSpec(rows=300))
    write_shard(root, 9, SynthSpec(rows=300))  # published, but not a candidate
    m = d.wait_for("shard 2 loaded", lambda m: m.get(DONE) == 2)
    assert m[ROWS] == 1000
    assert m["laion_ingest_bytes_downloaded_total"] > 0
    assert d.terminate() == 0
    assert_table_exact(db, root, [0, 2])


def test_foreign_table_schema_ends_the_daemon_with_one_line(tmp_path: Path, make_shards: Callable[..., Path]) -> None:
    db = tmp_path / "db"
    sess = open_chdb(db)
    sess.query("CREATE TABLE default.laion (id Int64, note String) ENGINE = MergeTree ORDER BY id")
    sess.close()
    src = make_shards([0], rows=100)
    proc = subprocess.run(
        [sys.executable, "-m", "ingest", "daemon", "--source", str(src), "--target", f"chdb:{db}",
         "--http-host", "127.0.0.1", "--http-port", str(free_ports(1)[0])],
        cwd=tmp_path, capture_output=True, text=True, timeout=WAIT_LIMIT, env=checkout_env(),
    )  # fmt: skip
    assert proc.returncode == EXIT_FATAL
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "table default.laion has columns (id Int64, note String)" in errors[0]
    assert "Traceback" not in proc.stderr


def test_port_in_use_is_a_config_error(tmp_path: Path, make_shards: Callable[..., Path]) -> None:
    src = make_shards([0], rows=10)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "ingest", "daemon", "--source", str(src), "--target", f"chdb:{tmp_path / 'db'}",
             "--http-host", "127.0.0.1", "--http-port", str(port)],
            cwd=tmp_path, capture_output=True, text=True, timeout=WAIT_LIMIT, env=checkout_env(),
        )  # fmt: skip
    assert proc.returncode == EXIT_USAGE
    assert f"error: cannot listen on 127.0.0.1:{port} for /metrics" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unreachable_server_target_is_live_but_not_ready(
    tmp_path: Path, make_shards: Callable[..., Path], daemons: Callable[..., DaemonProc]
) -> None:
    pytest.importorskip("ingest.sinks.http")
    src = make_shards([0], rows=10)
    d = daemons(tmp_path, src, f"http://127.0.0.1:{free_ports(1)[0]}")  # nothing listens there
    d.wait_for("metrics served", lambda m: ROWS in m)
    assert d.get("/healthz")[0] == 200
    status, _, body = d.get("/readyz")
    assert status == 503 and "not connected to the target" in body
    assert d.terminate() == 0


# -- pure decisions and flag parity ----------------------------------------------------------------------------
def test_poll_wait_backs_off_and_caps() -> None:
    assert poll_wait(30, 0) == 30
    assert [poll_wait(1, k, cap=10) for k in range(1, 6)] == [2, 4, 8, 10, 10]
    assert poll_wait(600, 3, cap=300) == 600  # never shorter than the interval itself
    assert poll_wait(1, 30) == BACKOFF_CAP_SECONDS == 60  # an outage never leaves a daemon idle for minutes


def test_back_off_after_an_unreachable_target_ends_when_it_answers() -> None:
    slept: list[float] = []
    probes: list[int] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def answers() -> None:
        probes.append(1)
        if len(probes) < 3:
            raise UnreachableTargetError("cannot connect to ClickHouse at 127.0.0.1:1: refused")

    asyncio.run(back_off(60, sleep, answers, lambda: False))
    assert len(probes) == 3 and sum(slept) < 60  # the third probe answered: the wait ended there
    slept.clear()
    asyncio.run(back_off(5, sleep, None, lambda: False))  # any other failure: the whole wait, no probe
    assert slept == [5]


def test_shards_to_load_skips_done_and_unchanged_quarantined(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json", "default.laion")
    ledger.start_shard(0, 10, 5)
    ledger.complete_shard(0)
    ledger.quarantine(1, "truncated")
    ledger.quarantine(2, "truncated")
    ledger.quarantine(4, "truncated")
    sigs = {1: ((1, 1),), 2: ((2, 2),), 4: None}
    tried = {1: ((1, 1),), 2: ((9, 9),), 4: None}  # 1 unchanged since tried, 2 changed, 4 unknowable (HTTP)
    assert shards_to_load([0, 1, 2, 3, 4], ledger, tried, sigs.__getitem__) == [2, 3]
    assert shards_to_load([1, 4], ledger, {}, sigs.__getitem__) == [1, 4]  # quarantined before this start: one try


def test_local_signature_changes_with_the_files(make_shards: Callable[..., Path]) -> None:
    src = make_shards([0], rows=20)
    before = local_signature(src, 0)
    assert before is not None and len(before) == 3
    write_shard(src, 0, SynthSpec(rows=21))
    assert local_signature(src, 0) not in (None, before)
    ShardFiles.in_dir(src, 0).text.unlink()
    assert local_signature(src, 0) is None


def test_daemon_shares_runs_flags() -> None:
    """Same flag names, defaults and bounds for every knob both commands take."""
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    run = {p.name: p for p in commands["run"].params}
    daemon = {p.name: p for p in commands["daemon"].params}
    only_daemon = {"poll_seconds", "http_host", "http_port", "index_every"}
    only_daemon |= {"serve", "serve_host", "serve_port", "index_name", "weights", "allow_image_urls"}
    assert set(daemon) - set(run) == only_daemon
    for name in set(daemon) - only_daemon - {"shards"}:
        a, b = run[name], daemon[name]
        assert (a.opts, a.secondary_opts, a.default) == (b.opts, b.secondary_opts, b.default), name
        assert _type_and_bounds(a) == _type_and_bounds(b), name


def _type_and_bounds(param: Any) -> tuple[object, ...]:
    """A parameter's type, range and choices as typer (< 0.29: click's types) builds them."""
    kind = param.type
    return type(kind).__name__, getattr(kind, "min", None), getattr(kind, "max", None), getattr(kind, "choices", None)


@pytest.mark.server
def test_daemon_loads_new_shards_into_each_server(
    tmp_path: Path, make_shards: Callable[..., Path], daemons: Callable[..., DaemonProc], server: Any, server_db: str
) -> None:
    """The daemon over HTTP (18.16 and 26.9), as the `ingest` user with a password from the environment."""
    from exact import assert_table_equals, expected_rows, server_table

    src = make_shards([0], rows=2000, dim=32)
    env = {"CLICKHOUSE_USER": "ingest", "CLICKHOUSE_PASSWORD": server.password}
    d = daemons(tmp_path, src, server.http_url, "--database", server_db, "--state", str(tmp_path / "l.json"), env=env)
    d.wait_for("shard 0 loaded", lambda m: m.get(DONE) == 1)
    write_shard(src, 1, SynthSpec(rows=1500, dim=32))
    m = d.wait_for("shard 1 loaded", lambda m: m.get(DONE) == 2)
    assert m[ROWS] == 3500 and m[QUARANTINED] == 0
    assert d.get("/readyz")[0::2] == (200, "ready\n")
    assert d.terminate() == 0
    assert "daemon: stopped cleanly (ledger flushed)" in d.messages()
    assert server.password not in d.logs()
    assert_table_equals(server_table(server, server_db), expected_rows(src, [0, 1]))
