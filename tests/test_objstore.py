"""Object-store sources against a real S3 API on loopback (moto's standalone server): LAION-5B at 768-d loads
byte-exact, a missing object quarantines its shard, a missing bucket is one usage error, a `.part` is resumed,
listing works for the daemon. gs:// and hf:// need the network: their URL and credential handling is unit-tested."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from cli_run import cli
from exact import assert_table_equals, chdb_table, expected_rows
from server_fixtures import free_ports

from ingest.core.config import SourceConfig
from ingest.core.errors import ConfigError
from ingest.core.layout import parse_layout
from ingest.stages.objstore import FsspecSource, parse_store
from ingest.stages.synth import SynthSpec, write_shard

boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")

SECRET = "moto-s3cr3t-do-not-log"
LAYOUT = parse_layout("laion5b")


def laion5b_paths(s: int) -> tuple[str, str, str]:
    return (
        f"img_emb/img_emb_{s:04d}.npy",
        f"text_emb/text_emb_{s:04d}.npy",
        f"laion2B-en-metadata/metadata_{s:04d}.parquet",
    )


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on a free loopback port; stopped by pid."""
    port = free_ports(1)[0]
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def env_for(endpoint: str | None) -> dict[str, str]:
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


def upload(endpoint: str, bucket: str, src: Path, prefix: str) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        **{k.lower(): v for k, v in env_for(None).items() if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=bucket)
    for path in sorted(src.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(src).as_posix()}")


def delete(endpoint: str, bucket: str, key: str) -> None:
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key=SECRET, region_name="us-east-1"
    )
    s3.delete_object(Bucket=bucket, Key=key)


# -- pure: URLs and credentials ------------------------------------------------------------------------------
def test_parse_store_urls_and_endpoints() -> None:
    s3 = parse_store("s3://bucket/laion2B-en/", None, {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})
    assert (s3.protocol, s3.path) == ("s3", "bucket/laion2B-en")
    assert s3.options == {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}
    assert s3.url("img_emb/img_emb_0000.npy") == "s3://bucket/laion2B-en/img_emb/img_emb_0000.npy"
    flag = parse_store("s3://b/p", "http://minio:9000", {"AWS_ENDPOINT_URL": "http://other"})
    assert flag.options == {"client_kwargs": {"endpoint_url": "http://minio:9000"}}
    assert parse_store("s3://b", None, {}).options == {}  # credentials and region: the standard AWS chain
    gs = parse_store("gs://bucket/emb", None, {"AWS_ENDPOINT_URL": "http://ignored"})
    assert (gs.protocol, gs.path, dict(gs.options), gs.url("x")) == ("gcs", "bucket/emb", {}, "gs://bucket/emb/x")
    hf = parse_store("hf://datasets/org/laion-embeddings/part1", None, {})
    assert (hf.protocol, hf.path, dict(hf.options)) == ("hf", "datasets/org/laion-embeddings/part1", {})
    for bad in ("s3://", "s3://AKIA:secret@bucket/p", "s3://b/p?X-Amz-Signature=abc", "ftp://b/p"):
        with pytest.raises(ConfigError) as exc:
            parse_store(bad, None, {})
        assert "secret" not in str(exc.value) and "abc" not in str(exc.value)
    with pytest.raises(ConfigError):
        parse_store("gs://b/p", "http://endpoint", {})


# -- against moto ---------------------------------------------------------------------------------------------
def test_s3_laion5b_768d_byte_exact(moto: str, tmp_path: Path) -> None:
    src, db, cache = tmp_path / "laion2B-en", tmp_path / "db", tmp_path / "cache"
    for s in (0, 1):
        write_shard(src, s, SynthSpec(rows=1500, dim=768), LAYOUT)
    upload(moto, "laion", src, "laion2B-en")
    res = cli(
        "run",
        "--no-progress",
        "--source",
        "s3://laion/laion2B-en",
        "--layout",
        "laion5b",
        "--shards",
        "0-1",
        "--target",
        f"chdb:{db}",
        "--cache-dir",
        str(cache),
        env=env_for(moto),
    )
    assert res.returncode == 0, res.stderr
    assert "done: 2 shards, 3,000 rows inserted" in res.stdout
    assert SECRET not in res.stdout + res.stderr
    assert_table_equals(chdb_table(db), expected_rows(src, [0, 1], laion5b_paths))
    assert not [p for p in cache.rglob("*") if p.is_file()], "downloads are removed once their shard landed"


def test_s3_missing_object_quarantines_missing_bucket_is_usage_error(moto: str, tmp_path: Path) -> None:
    src, db = tmp_path / "src", tmp_path / "db"
    for s in (0, 1):
        write_shard(src, s, SynthSpec(rows=700, dim=64))
    upload(moto, "quarantine", src, "emb")
    delete(moto, "quarantine", "emb/metadata/metadata_1.parquet")
    report = tmp_path / "report.json"
    # the endpoint by flag this time (no AWS_ENDPOINT_URL in the environment)
    res = cli(
        "run",
        "--no-progress",
        "--source",
        "s3://quarantine/emb",
        "--endpoint-url",
        moto,
        "--shards",
        "0-1",
        "--target",
        f"chdb:{db}",
        "--cache-dir",
        str(tmp_path / "c"),
        "--report",
        str(report),
        env=env_for(None),
    )
    assert res.returncode == 3, res.stderr
    bad = orjson.loads(report.read_bytes())["quarantined"]
    assert [b["shard"] for b in bad] == [1] and "metadata_1.parquet not found" in bad[0]["reason"]
    assert_table_equals(chdb_table(db), expected_rows(src, [0]))
    res = cli(
        "run",
        "--no-progress",
        "--source",
        "s3://no-such-bucket/emb",
        "--shards",
        "0-409",
        "--target",
        f"chdb:{tmp_path / 'db2'}",
        "--cache-dir",
        str(tmp_path / "c"),
        env=env_for(moto),
    )
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "s3://no-such-bucket/emb not found" in lines[0], res.stderr


def test_s3_resumes_part_and_lists_shards(moto: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src, cache = tmp_path / "src", tmp_path / "cache"
    for s in (0, 2, 5):
        write_shard(src, s, SynthSpec(rows=900, dim=768), LAYOUT)
    upload(moto, "resume", src, "x")
    delete(moto, "resume", "x/text_emb/text_emb_0005.npy")  # shard 5 incomplete: not available
    for k, v in env_for(moto).items():
        monkeypatch.setenv(k, v)
    rel = "img_emb/img_emb_0002.npy"
    whole = (src / rel).read_bytes()
    planted = b"\xab" * 4096  # not the source's bytes: only a resumed download keeps them
    part = cache / (rel + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(planted)

    async def go() -> tuple[list[int], list[int]]:
        source = FsspecSource(SourceConfig(root="s3://resume/x", cache_dir=cache, layout=LAYOUT, keep_downloads=True))
        await source.check_root(0)
        files = await source.fetch(2)
        assert files.img == cache / rel
        return await source.available(None), await source.available([0, 5])

    listed, wanted = asyncio.run(go())
    assert listed == [0, 2] and wanted == [0]
    got = (cache / rel).read_bytes()
    assert len(got) == len(whole) and got[:4096] == planted and got[4096:] == whole[4096:]
    assert not part.exists()
    assert (cache / "laion2B-en-metadata/metadata_0002.parquet").read_bytes() == (
        src / "laion2B-en-metadata/metadata_0002.parquet"
    ).read_bytes()
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == SECRET


@pytest.mark.parametrize(
    ("root", "package"), [("gs://bucket/emb", "gcsfs"), ("hf://datasets/org/repo", "huggingface_hub")]
)
def test_missing_store_package_is_one_usage_error(root: str, package: str, tmp_path: Path) -> None:
    """Without the extra installed (as here), the run says which package to install: one line, exit 2."""
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    res = cli("run", "--no-progress", "--source", root, "--shards", "0", "--target", f"chdb:{tmp_path / 'db'}")
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"install {package}" in lines[0], res.stderr
