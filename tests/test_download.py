"""The HTTP source against a real loopback server: resume, retries, quarantine, exact rows in the end (its pure
parts, URLs, ranges and error classes: tests/test_download_plan.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cli_run import cli
from exact import assert_table_equals, chdb_table, expected_rows
from http_mirror import HttpMirror

from ingest.core.config import SourceConfig
from ingest.core.errors import MissingSourceFile, SourceError, TransientSourceError
from ingest.core.metrics import REGISTRY
from ingest.core.retry import RetryPolicy
from ingest.stages.download import (
    HttpSource,
    shard_relpaths,
)

T = TypeVar("T")
IMG0 = "img_emb/img_emb_0.npy"
TXT0 = "text_emb/text_emb_0.npy"
META0 = "metadata/metadata_0.parquet"


# -- HttpSource in-process ---------------------------------------------------------------------------------
def settings(source: str, cache: Path, max_retries: int = 4, **kw: Any) -> SourceConfig:
    return SourceConfig(root=source, cache_dir=cache, retry=RetryPolicy(max_retries, max_seconds=0.05), **kw)


def with_source(s: SourceConfig, body: Callable[[HttpSource], Coroutine[Any, Any, T]]) -> T:
    async def main() -> T:
        src = HttpSource(s)
        try:
            return await body(src)
        finally:
            await src.close()

    return asyncio.run(main())


def fetch(s: SourceConfig, shard: int = 0) -> None:
    async def body(src: HttpSource) -> None:
        files = await src.fetch(shard)
        assert files.img == s.cache_dir / f"img_emb/img_emb_{shard}.npy"

    with_source(s, body)


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def assert_same_files(src: Path, cache: Path, shard: int = 0) -> None:
    for rel in shard_relpaths(shard):
        assert (cache / rel).read_bytes() == (src / rel).read_bytes(), rel
        assert not (cache / (rel + ".part")).exists()


@pytest.fixture(scope="module")
def src_one(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 3000-row shard served read-only by the in-process tests."""
    from ingest.stages.synth import SynthSpec, write_shard

    root = tmp_path_factory.mktemp("one")
    write_shard(root, 0, SynthSpec(rows=3000))
    return root


def test_drop_midway_resumes_from_the_right_offset(src_one: Path, tmp_path: Path) -> None:
    size = (src_one / IMG0).stat().st_size
    before_bytes = counter("laion_ingest_bytes_downloaded_total")
    before_retries = counter("laion_ingest_retries_total")
    with HttpMirror(src_one) as m:
        m.drop_midway("/" + IMG0, times=1, fraction=0.5)
        fetch(settings(m.url, tmp_path / "cache", keep_downloads=True))
        first, resumed_at = m.range_starts("/" + IMG0)
        # what reached the disk before the cut (aiohttp may drop what it buffered when the connection dies)
        assert first is None and resumed_at is not None and 0 < resumed_at <= size // 2
        assert [r.status for r in m.requests("/" + IMG0)] == [200, 206]
        assert m.count("/" + TXT0) == 1 and m.count("/" + META0) == 1
    assert_same_files(src_one, tmp_path / "cache")
    total = sum((src_one / rel).stat().st_size for rel in shard_relpaths(0))
    assert counter("laion_ingest_bytes_downloaded_total") - before_bytes == total, "resume must not refetch bytes"
    assert counter("laion_ingest_retries_total") - before_retries == 1


def test_server_ignoring_range_restarts_from_zero(src_one: Path, tmp_path: Path) -> None:
    with HttpMirror(src_one) as m:
        m.set_ignore_range()
        m.drop_midway("/" + IMG0, times=2, fraction=0.3)
        fetch(settings(m.url.rstrip("/"), tmp_path / "cache"))
        reqs = m.requests("/" + IMG0)
        assert [r.status for r in reqs] == [200, 200, 200]
        assert reqs[1].range_start and reqs[2].range_start, "we asked to resume; the server said no"
    assert_same_files(src_one, tmp_path / "cache")


def test_503_twice_then_success(src_one: Path, tmp_path: Path) -> None:
    with HttpMirror(src_one) as m:
        m.fail("/" + META0, 503, times=2)
        fetch(settings(m.url, tmp_path / "cache"))
        assert [r.status for r in m.requests("/" + META0)] == [503, 503, 200]
    assert_same_files(src_one, tmp_path / "cache")


def test_always_short_body_gives_up_and_renames_nothing(src_one: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with HttpMirror(src_one) as m:
        m.short_body("/" + TXT0, missing=1000)
        with pytest.raises(TransientSourceError) as info:
            fetch(settings(m.url, cache, max_retries=2))
        assert m.count("/" + TXT0) == 3, "one try and two retries"
    msg = str(info.value)
    assert "shard 0" in msg and "text_emb_0.npy" in msg and "gave up after 2 retries" in msg
    assert not (cache / TXT0).exists(), "an incomplete file must never get its final name"
    assert (cache / (TXT0 + ".part")).stat().st_size < (src_one / TXT0).stat().st_size


def test_404_names_file_and_url_and_cleans_the_shard(src_one: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for rel in shard_relpaths(0)[:2]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes((src_one / rel).read_bytes())
    cache = tmp_path / "cache"
    with HttpMirror(src) as m:
        with pytest.raises(MissingSourceFile) as info:
            fetch(settings(m.url, cache))
        assert not info.value.retriable
        assert "metadata_0.parquet" in str(info.value) and f"{m.url}{META0}" in str(info.value)
    assert not [p for p in cache.rglob("*") if p.is_file()], "a refused shard leaves nothing in the cache"


def test_a_refused_shard_leaves_nothing_even_with_an_open_on_its_way(
    src_one: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CI under load once found img_emb_0.npy.part after the parquet's 404: the image's download was cancelled
    while aiofiles' thread was opening its .part, and the thread created the file after the shard's cleanup. Here
    each open takes 0.3 s in its thread (the OS creates the file there, cancelled or not), so the 404 always comes
    while the other two opens are on their way."""
    import time

    import aiofiles
    import aiofiles.threadpool

    def slow_open(path: Path, mode: str = "r") -> Coroutine[Any, Any, Any]:
        async def go() -> Any:
            loop = asyncio.get_running_loop()

            def blocking() -> Any:
                time.sleep(0.3)
                return open(path, mode)

            return aiofiles.threadpool.wrap(await loop.run_in_executor(None, blocking), loop=loop)

        return go()

    monkeypatch.setattr(aiofiles, "open", slow_open)
    src = tmp_path / "src"
    for rel in shard_relpaths(0)[:2]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes((src_one / rel).read_bytes())
    cache = tmp_path / "cache"
    with HttpMirror(src) as m, pytest.raises(MissingSourceFile):
        fetch(settings(m.url, cache))
    time.sleep(0.5)  # any open still in a thread has ended
    assert not [p for p in cache.rglob("*") if p.is_file()], "a refused shard leaves nothing in the cache"


def test_403_is_not_retried(src_one: Path, tmp_path: Path) -> None:
    with HttpMirror(src_one) as m:
        m.fail("/" + IMG0, 403)
        with pytest.raises(SourceError) as info:
            fetch(settings(m.url, tmp_path / "cache"))
        assert not info.value.retriable and "HTTP 403" in str(info.value)
        assert m.count("/" + IMG0) == 1


def test_complete_part_and_oversized_part(src_one: Path, tmp_path: Path) -> None:
    """A .part already whole (crash before rename) is renamed after a 416; a too-long one is fetched anew."""
    cache = tmp_path / "cache"
    whole, bad = cache / (IMG0 + ".part"), cache / (TXT0 + ".part")
    whole.parent.mkdir(parents=True)
    bad.parent.mkdir(parents=True)
    whole.write_bytes((src_one / IMG0).read_bytes())
    bad.write_bytes((src_one / TXT0).read_bytes() + b"junk")
    with HttpMirror(src_one) as m:
        fetch(settings(m.url, cache))
        assert [(r.range_start, r.status) for r in m.requests("/" + IMG0)] == [((src_one / IMG0).stat().st_size, 416)]
        txt = [(r.range_start, r.status) for r in m.requests("/" + TXT0)]
        assert txt == [((src_one / TXT0).stat().st_size + 4, 416), (None, 200)]
    assert_same_files(src_one, cache)


def test_cache_reused_when_sizes_match_else_refetched(src_one: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with HttpMirror(src_one) as m:
        s = settings(m.url, cache)
        fetch(s)
        (cache / META0).write_bytes(b"stale")
        fetch(s)
        assert m.count("/" + IMG0) == 1 and m.count("/" + IMG0, "HEAD") == 1
        assert m.count("/" + META0) == 2, "a cached file of the wrong size is downloaded again"
    assert_same_files(src_one, cache)


def test_release_deletes_unless_kept(src_one: Path, tmp_path: Path) -> None:
    async def fetch_release(src: HttpSource) -> None:
        await src.fetch(0)
        await src.release(0)

    with HttpMirror(src_one) as m:
        with_source(settings(m.url, tmp_path / "a"), fetch_release)
        with_source(settings(m.url, tmp_path / "b", keep_downloads=True), fetch_release)
    assert not [p for p in (tmp_path / "a").rglob("*") if p.is_file()]
    assert_same_files(src_one, tmp_path / "b")


def test_available_heads_candidates_and_reads_listings(make_shards, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_shards([0, 1, 3], rows=50, dim=8)
    (src / "text_emb" / "text_emb_1.npy").unlink()
    with HttpMirror(src) as m:
        s = settings(m.url, tmp_path / "cache")
        assert with_source(s, lambda h: h.available([0, 1, 2, 3])) == [0, 3]
        assert m.count("/img_emb/img_emb_2.npy", "HEAD") == 1
        assert with_source(s, lambda h: h.available(None)) == [0, 3], "from the http.server-style listing"
        m.fail("/img_emb/", 404)
        assert with_source(s, lambda h: h.available(None)) == []
        assert not [r for r in m.seen if r.method == "GET" and r.path.endswith(".npy")], "HEAD only"


def test_query_token_is_sent_but_never_logged(src_one: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with HttpMirror(src_one) as m:
        m.fail("/" + IMG0, 503, times=1)
        m.fail("/" + META0, 404)
        with caplog.at_level(logging.DEBUG, logger="ingest"), pytest.raises(MissingSourceFile) as info:
            fetch(settings(m.url + "?token=t0ps3cret", tmp_path / "cache"))
        assert {r.query for r in m.seen} == {"token=t0ps3cret"}
    assert "t0ps3cret" not in caplog.text and "t0ps3cret" not in str(info.value)
    assert "metadata_0.parquet" in str(info.value)


# -- the CLI end to end over loopback HTTP ---------------------------------------------------------------
def run_cli(url: str, tmp: Path, shards: str, *extra: str) -> tuple[int, str, str]:
    res = cli(
        "run", "--source", url, "--shards", shards, "--target", f"chdb:{tmp / 'db'}",
        "--cache-dir", str(tmp / "cache"), "--no-progress", "--retry-max-seconds", "0.05", *extra,
    )  # fmt: skip
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, res.stdout, res.stderr


def cached_files(tmp: Path) -> list[Path]:
    return sorted(p for p in (tmp / "cache").rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def src_three(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ingest.stages.synth import SynthSpec, write_shard

    root = tmp_path_factory.mktemp("three")
    for s in (0, 1, 2):
        write_shard(root, s, SynthSpec(rows=5000))
    return root


def test_run_over_http_is_exact_and_clears_the_cache(src_three: Path, tmp_path: Path) -> None:
    with HttpMirror(src_three) as m:
        code, out, err = run_cli(m.url, tmp_path, "0-2")
    assert code == 0, err
    assert "done: 3 shards, 15,000 rows inserted" in out
    assert_table_equals(chdb_table(tmp_path / "db"), expected_rows(src_three, [0, 1, 2]))
    assert cached_files(tmp_path) == []


def test_run_with_faults_and_keep_downloads(src_three: Path, tmp_path: Path) -> None:
    with HttpMirror(src_three) as m:
        m.drop_midway("/img_emb/img_emb_1.npy", times=1)
        m.fail("/metadata/metadata_2.parquet", 503, times=2)
        m.fail("/text_emb/text_emb_0.npy", 500, times=1)
        code, out, err = run_cli(m.url.rstrip("/"), tmp_path, "0-2", "--keep-downloads")
        resumed_at = m.range_starts("/img_emb/img_emb_1.npy")[1]
        assert resumed_at and 0 < resumed_at <= (src_three / "img_emb/img_emb_1.npy").stat().st_size // 2
    assert code == 0, err
    assert "done: 3 shards, 15,000 rows inserted" in out
    assert "retry 1/8" in err
    assert_table_equals(chdb_table(tmp_path / "db"), expected_rows(src_three, [0, 1, 2]))
    for s in (0, 1, 2):
        assert_same_files(src_three, tmp_path / "cache", s)


def test_503_forever_exits_4_with_one_line(src_three: Path, tmp_path: Path) -> None:
    with HttpMirror(src_three) as m:
        m.fail("/text_emb/text_emb_1.npy", 503)
        code, _, err = run_cli(m.url, tmp_path, "1", "--max-retries", "2")
        assert m.count("/text_emb/text_emb_1.npy") == 3
    assert code == 4, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "shard 1" in errors[0] and "text_emb_1.npy" in errors[0] and "HTTP 503" in errors[0]
    assert "gave up after 2 retries" in errors[0]


def test_404_quarantines_only_that_shard(src_three: Path, tmp_path: Path) -> None:
    with HttpMirror(src_three) as m:
        m.fail("/metadata/metadata_1.parquet", 404)
        code, out, err = run_cli(m.url, tmp_path, "0-2")
    assert code == 3, err
    assert "shard 1:" in err and "metadata_1.parquet not found" in err and "HTTP 404" in err
    assert "done: 2 shards" in out and "bad shard(s): 1" in out
    assert_table_equals(chdb_table(tmp_path / "db"), expected_rows(src_three, [0, 2]))
    assert cached_files(tmp_path) == []
