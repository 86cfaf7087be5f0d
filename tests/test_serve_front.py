"""The real clip-front page (clip-retrieval 2.45.0's `front/build`, as shipped; only `config.json` points at our
service) in Debian's headless chromium: it searches on load, and the tiles show our captions."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from chromium_cdp import DEEP_IMAGES, DEEP_TEXT, chromium_available, chromium_page
from cli_run import cli
from serve_run import clip_retrieval_dir, serving
from server_fixtures import free_ports

from ingest.stages.synth import SynthSpec, write_shard

pytestmark = pytest.mark.timeout(600)
QUERY = "a red car on a beach"
SCREENSHOT = os.environ.get("CLIP_FRONT_SCREENSHOT")
"""Where to keep the page's screenshot (the README's is made with this set); else a temporary file."""


def static_server(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_ports(1)[0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("static server did not start")


async def render(url: str, profile: Path, shot: Path, want: list[str]) -> tuple[str, int]:
    async with chromium_page(profile) as page:
        await page.call("Page.navigate", url=url)
        text, images = "", 0
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            text = await page.evaluate(DEEP_TEXT) or ""
            images = await page.evaluate(DEEP_IMAGES) or 0
            if sum(c in text for c in want) >= len(want) // 2:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # let the last tiles paint before the picture
        await page.screenshot(shot)
        return text, images


def test_clip_front_page_shows_our_results(tmp_path: Path) -> None:
    if (reason := chromium_available()) is not None:
        pytest.skip(reason)
    where = clip_retrieval_dir()
    if where is None:
        pytest.skip("clip-retrieval is not installed: pip install --no-deps clip-retrieval==2.45.0")
    src = tmp_path / "src"
    for s in (0, 1):
        write_shard(src, s, SynthSpec(rows=2000, seed=5))
    target = f"chdb:{tmp_path / 'db'}"
    assert cli("run", "--source", str(src), "--shards", "0-1", "--target", target, "--no-progress").returncode == 0
    res = cli("index", "--target", target, "--column", "image_embedding", "--m", "16", "--ef-construction", "64")
    assert res.returncode == 0, res.stderr
    front = tmp_path / "front"
    shutil.copytree(where.parent / "front" / "build", front)
    with serving(["--target", target, "--weights", "random", "--index-name", "laion_400m"], tmp_path / "s.log") as sv:
        (front / "config.json").write_text(
            json.dumps({"defaultBackend": sv.url, "defaultIndex": "laion_400m", "urlColumn": "url"})
        )
        body = {
            "text": QUERY,
            "modality": "image",
            "num_images": 40,
            "num_result_ids": 3000,
            "indice_name": "laion_400m",
            "deduplicate": True,
            "use_safety_model": True,
            "use_violence_detector": True,
        }
        expected = sv.post("/knn-service", body).json()
        want = [r["caption"] for r in expected[:10] if r.get("caption")]
        assert len(want) >= 5
        static, port = static_server(front)
        try:
            page = f"http://127.0.0.1:{port}/index.html?" + urllib.parse.urlencode({"query": QUERY})
            shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "clip-front.png"
            text, images = asyncio.run(render(page, tmp_path / "profile", shot, want))
        finally:
            static.kill()
            static.wait()
        shown = [c for c in want if c in text]
        assert len(shown) >= len(want) // 2, (want, text[:2000])
        assert images >= len(shown)
        assert shot.stat().st_size > 10_000
        log = sv.log_text()
        assert "Traceback" not in log
