"""The CLI contract: commands exist, errors are one line with the right exit code, no traceback."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from cli_run import cli

COMMANDS = ("run", "synth", "demo", "index", "search", "eval", "daemon", "encode-text", "encode-image")


def test_help_lists_every_command() -> None:
    res = cli("--help")
    assert res.returncode == 0
    for name in COMMANDS:
        assert name in res.stdout, name


def test_only_an_early_command_skips_registering_the_others() -> None:
    """run/synth/demo/encode-* start without importing the index, serve and daemon layers; anything else (help,
    a later command after --debug, a typo) gets every command."""
    from ingest.cli.app import needs_later_commands

    assert not needs_later_commands(["laion-ingest", "run", "--target", "index"])
    assert not needs_later_commands(["laion-ingest", "--debug", "synth", "--out", "x"])
    assert needs_later_commands(["laion-ingest"])
    assert needs_later_commands(["laion-ingest", "--help"])
    assert needs_later_commands(["laion-ingest", "--debug", "index", "--help"])
    assert needs_later_commands(["laion-ingest", "serach"])
    res = cli("--debug", "plan", "--help")
    assert res.returncode == 0 and "--max-memory" in res.stdout, res.stderr
    res = cli("serach")
    assert res.returncode != 0 and "No such command" in res.stderr and "Traceback" not in res.stderr


def test_each_command_has_help() -> None:
    for name in COMMANDS:
        res = cli(name, "--help")
        assert res.returncode == 0, (name, res.stderr)
        assert "Usage" in res.stdout


def test_synth_layout(tmp_path: Path) -> None:
    res = cli("synth", "--out", str(tmp_path), "--shards", "0-1,4", "--rows", "300", "--dim", "16", "--seed", "3")
    assert res.returncode == 0, res.stderr
    import pyarrow.parquet as pq

    for s in (0, 1, 4):
        img = np.load(tmp_path / "img_emb" / f"img_emb_{s}.npy")
        txt = np.load(tmp_path / "text_emb" / f"text_emb_{s}.npy")
        meta = pq.read_table(tmp_path / "metadata" / f"metadata_{s}.parquet")
        assert img.dtype == np.float16 and img.shape == (300, 16) and txt.shape == (300, 16)
        norms = np.linalg.norm(img.astype(np.float32), axis=1)
        assert np.allclose(norms, 1.0, atol=2e-3)
        cos = (img.astype(np.float32) * txt.astype(np.float32)).sum(axis=1)
        assert cos.mean() > 0.5, "text vectors must correlate with their image vector"
        assert meta.num_rows == 300
        assert meta.column_names == [
            "image_path",
            "caption",
            "NSFW",
            "similarity",
            "LICENSE",
            "url",
            "key",
            "status",
            "error_message",
            "width",
            "height",
            "original_width",
            "original_height",
            "exif",
            "md5",
        ]
        caps = meta.column("caption").to_pylist()
        assert None in caps, "some captions must be null"
        text = " ".join(c for c in caps if c)
        assert '"' in text and "'" in text and any(ord(ch) > 127 for ch in text)
    assert not (tmp_path / "img_emb" / "img_emb_2.npy").exists()
    # same seed, same bytes
    other = tmp_path / "again"
    assert (
        cli("synth", "--out", str(other), "--shards", "0", "--rows", "300", "--dim", "16", "--seed", "3").returncode
        == 0
    )
    assert (other / "img_emb" / "img_emb_0.npy").read_bytes() == (tmp_path / "img_emb" / "img_emb_0.npy").read_bytes()


def test_bad_shard_spec_is_one_line(tmp_path: Path) -> None:
    res = cli("run", "--source", str(tmp_path), "--shards", "3-1", "--target", f"chdb:{tmp_path / 'db'}")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "bad shard range" in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_target_is_one_line(tmp_path: Path) -> None:
    res = cli("run", "--source", str(tmp_path), "--shards", "0", "--target", "mysql://x")
    assert res.returncode == 2
    assert "unknown target" in res.stderr and "Traceback" not in res.stderr


def test_unsafe_table_name_refused(tmp_path: Path) -> None:
    res = cli(
        "run",
        "--source",
        str(tmp_path),
        "--shards",
        "0",
        "--target",
        f"chdb:{tmp_path / 'db'}",
        "--table",
        "x; DROP TABLE y",
    )
    assert res.returncode == 2
    assert "invalid table name" in res.stderr and "Traceback" not in res.stderr


def test_merge_policy_defers_a_run_into_one_target_not_the_daemon_nor_a_cluster() -> None:
    import pytest

    from ingest.cli.flags import merge_policy
    from ingest.core.errors import ConfigError

    assert merge_policy("auto", steady=False) == "deferred"  # a run into chdb or one server
    assert merge_policy("auto", steady=True) == "during"  # the daemon
    assert merge_policy("auto", steady=False, cluster="two") == "during"
    assert merge_policy("during", steady=False) == "during"
    assert merge_policy("deferred", steady=True) == "deferred"
    with pytest.raises(ConfigError, match="not a --cluster"):
        merge_policy("deferred", steady=False, cluster="two")


class _SlowRefusal(BaseHTTPRequestHandler):
    """A server that takes a second to refuse every user: long enough for a run to validate its shards."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(1.0)
        body = b"Code: 516. DB::Exception: default: Authentication failed. (AUTHENTICATION_FAILED)\n"
        self.send_response(401)
        self.send_header("X-ClickHouse-Exception-Code", "516")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        pass


def test_a_target_that_refuses_us_is_the_one_line_and_no_shard_is_judged_meanwhile(tmp_path: Path) -> None:
    """Shards are validated while the target opens, but a shard is recorded (planned, quarantined) only once it
    opened: a run into a server that refuses our user says that alone, and leaves no verdict in the ledger."""
    src = tmp_path / "src"
    assert cli("synth", "--out", str(src), "--shards", "0-1", "--rows", "50", "--dim", "8").returncode == 0
    (src / "img_emb" / "img_emb_0.npy").unlink()  # shard 0 is bad: validated in well under the second
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowRefusal)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state = tmp_path / "ledger.json"
    try:
        res = cli(
            *("run", "--source", str(src), "--shards", "0-1", "--target", f"http://127.0.0.1:{server.server_port}"),
            *("--state", str(state), "--no-progress"),
        )
    finally:
        server.shutdown()
        server.server_close()
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stderr
    assert "authentication failed for user 'default'" in lines[0] and "Traceback" not in res.stderr
    assert not state.exists() or not json.loads(state.read_text()).get("shards")
