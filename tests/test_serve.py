"""`laion-ingest serve` with clip-retrieval 2.45.0's own ClipClient, against chdb and a 26.9 server over HTTP.

One module-scoped table per engine (2 × 3,000 synthetic clustered rows, both vector indexes with small HNSW
parameters) and one service process over it (`--weights random`: text and image queries work offline). Expected
neighbours come from the source .npy files by exact brute force in numpy, never from the service itself.
"""

from __future__ import annotations

import base64
import io
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from cli_run import cli
from serve_run import Served, load_clip_client, serving, start_serve

from ingest.stages.synth import SynthSpec, write_shard

pytestmark = pytest.mark.timeout(900)

ROWS = 3000
SHARDS = (0, 1)
STRIDE = 10_000_000
SMALL = ("--m", "16", "--ef-construction", "64")
SAFE = "UNLIKELY"


@dataclass
class Source:
    ids: np.ndarray
    img: np.ndarray
    txt: np.ndarray
    nsfw: np.ndarray

    def vectors(self, modality: str) -> np.ndarray:
        return self.img if modality == "image" else self.txt

    def exact(self, q: np.ndarray, modality: str, k: int, safe_only: bool) -> list[int]:
        """Ids of the k nearest rows by cosine distance (float64), optionally among safe rows only."""
        v = self.vectors(modality).astype(np.float64)
        sims = (v @ q) / (np.linalg.norm(v, axis=1) * np.linalg.norm(q))
        if safe_only:
            sims = np.where(self.nsfw == SAFE, sims, -np.inf)
        order = np.argsort(-sims, kind="stable")[:k]
        return [int(self.ids[i]) for i in order if np.isfinite(sims[i])]


@dataclass
class Setup:
    engine: str
    src: Source
    served: Served
    index: str


def read_source(src: Path) -> Source:
    ids, img, txt, nsfw = [], [], [], []
    for s in SHARDS:
        img.append(np.load(src / "img_emb" / f"img_emb_{s}.npy").astype(np.float32))
        txt.append(np.load(src / "text_emb" / f"text_emb_{s}.npy").astype(np.float32))
        meta = pq.read_table(next((src / "metadata").glob(f"metadata_{s}.parquet")))
        nsfw.append(np.array([x or "" for x in meta.column("NSFW").to_pylist()], dtype=object))
        ids.append(np.arange(len(img[-1]), dtype=np.int64) + s * STRIDE)
    return Source(np.concatenate(ids), np.concatenate(img), np.concatenate(txt), np.concatenate(nsfw))


def ok(res: Any) -> None:
    assert res.returncode == 0, res.stderr


@pytest.fixture(scope="module", params=["chdb", "26.9"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp(f"serve-{request.param}")
    src = root / "src"
    for s in SHARDS:
        write_shard(src, s, SynthSpec(rows=ROWS, seed=11))
    if request.param == "chdb":
        target = ["--target", f"chdb:{root / 'db'}"]
        load_as = serve_as = target
    else:
        server = request.getfixturevalue("ch26_server")
        if not server.running:
            server.start()
        (root / "pw").write_text(server.password)
        (root / "rpw").write_text(server.reader_password)
        db = f"s_{secrets.token_hex(4)}"
        target = ["--target", server.http_url, "--database", db]
        load_as = [*target, "--user", server.user, "--password-file", str(root / "pw")]
        serve_as = [*target, "--user", "searcher", "--password-file", str(root / "rpw")]
    ok(cli("run", "--source", str(src), "--shards", "0-1", *load_as, "--no-progress"))
    ok(cli("index", *load_as, "--column", "all", *SMALL, "--no-progress"))
    with serving([*serve_as, "--weights", "random", "--index-name", "laion_400m"], root / "serve.log") as served:
        yield Setup(request.param, read_source(src), served, "laion_400m")


def client(setup: Setup, **kw: Any) -> Any:
    mod = load_clip_client()
    modality = mod.Modality.TEXT if kw.pop("modality", "image") == "text" else mod.Modality.IMAGE
    return mod.ClipClient(f"{setup.served.url}/knn-service", setup.index, modality=modality, **kw)


def safe_row(src: Source, n: int = 5) -> list[int]:
    return [i for i in range(len(src.ids)) if src.nsfw[i] == SAFE][:n]


@pytest.mark.parametrize("modality", ["image", "text"])
def test_clip_client_defaults_embedding_input_row_comes_back_first(setup: Setup, modality: str) -> None:
    """ClipClient at its defaults (deduplicate, use_safety_model, use_violence_detector all true)."""
    src = setup.src
    recalls = []
    for pos in safe_row(src):
        q = src.vectors(modality)[pos]
        got = client(setup, modality=modality).query(embedding_input=q.tolist())
        assert isinstance(got, list) and got, got
        assert got[0]["id"] == int(src.ids[pos])
        assert got[0]["similarity"] == pytest.approx(1.0, abs=1e-6)
        assert len(got) <= 40
        assert {"url", "caption", "NSFW", "id", "similarity"} <= set(got[0])
        assert all(r["NSFW"] == SAFE for r in got), "use_safety_model lets only UNLIKELY through"
        sims = [r["similarity"] for r in got]
        assert sims == sorted(sims, reverse=True)
        exact = src.exact(q.astype(np.float64), modality, 40, safe_only=True)
        for r in got:  # similarity is the stored vector's cosine, exactly
            i = int(np.searchsorted(src.ids, r["id"]))
            v = src.vectors(modality)[i].astype(np.float64)
            assert r["similarity"] == pytest.approx(float(v @ q / np.linalg.norm(v) / np.linalg.norm(q)), abs=1e-6)
        recalls.append(len({r["id"] for r in got} & set(exact)) / len(got))
    assert min(recalls) >= 0.9, recalls


def test_text_and_image_queries_use_the_clip_encoder(setup: Setup, tmp_path: Path) -> None:
    from PIL import Image

    got = client(setup).query(text="a photo of a red car")
    assert len(got) >= 1 and all("caption" in r and "url" in r for r in got)
    image = tmp_path / "q.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(image)
    got_img = client(setup, modality="text").query(image=str(image))
    assert len(got_img) >= 1 and -1.0 <= got_img[0]["similarity"] <= 1.0
    again = client(setup, modality="text").query(image=str(image))
    assert [r["id"] for r in again] == [r["id"] for r in got_img], "one model, loaded once: same answer"


def test_diffusers_retrieve_body(setup: Setup) -> None:
    """What diffusers' examples/custom_diffusion/retrieve.py sends: ClipClient(num_images=300,
    aesthetic_weight=0.1).query(text=...), then reads url and caption of each result."""
    got = client(setup, num_images=300, aesthetic_weight=0.1).query(text="photo of a dog")
    assert 1 <= len(got) <= 300
    assert all(isinstance(r["url"], str) and isinstance(r["caption"], str) for r in got)
    assert len({r["id"] for r in got}) == len(got)


def test_raw_body_any_content_type_num_result_ids_and_ignored_header(setup: Setup) -> None:
    src = setup.src
    pos = 7
    body = {
        "embedding_input": src.img[pos].tolist(),
        "modality": "image",
        "num_images": 5,
        "num_result_ids": 30,
        "indice_name": setup.index,
        "use_violence_detector": True,
        "aesthetic_score": "9",
        "aesthetic_weight": "0.5",
    }
    reply = setup.served.post("/knn-service", body, {"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.status == 200, reply.body
    got = reply.json()
    assert len(got) == 30 and got[0]["id"] == int(src.ids[pos])
    assert all("url" in r for r in got[:5]) and all(set(r) == {"id", "similarity"} for r in got[5:])
    assert [r["id"] for r in got] == src.exact(src.img[pos].astype(np.float64), "image", 30, False)[:30] or (
        len({r["id"] for r in got} & set(src.exact(src.img[pos].astype(np.float64), "image", 30, False))) >= 27
    )
    assert reply.headers["X-Clip-Ignored-Options"] == "use_violence_detector, aesthetic_score, aesthetic_weight"
    assert "use_violence_detector" in setup.served.log_text()


def test_deduplicate_drops_near_copies_of_better_results(setup: Setup) -> None:
    src = setup.src
    q = src.img[11].tolist()
    base = {"embedding_input": q, "modality": "image", "num_images": 50, "indice_name": setup.index}
    plain = setup.served.post("/knn-service", base).json()
    dedup = setup.served.post("/knn-service", {**base, "deduplicate": True}).json()
    kept = {r["id"] for r in dedup}
    assert kept <= {r["id"] for r in plain} and dedup[0]["id"] == plain[0]["id"]
    vec = {int(src.ids[i]): src.img[i] / np.linalg.norm(src.img[i]) for i in range(len(src.ids))}
    for a in dedup:
        for b in dedup:
            if a["id"] != b["id"]:
                assert float(vec[a["id"]] @ vec[b["id"]]) <= 0.94 + 1e-6
    for r in plain:  # every dropped result is within 0.94 of some result ranked before it
        if r["id"] not in kept:
            better = [p["id"] for p in plain[: plain.index(r)]]
            assert max(float(vec[r["id"]] @ vec[b]) for b in better) > 0.94 - 1e-6


def test_metadata_and_indices_list_and_cors(setup: Setup) -> None:
    served, src = setup.served, setup.src
    lst = served.get("/indices-list", {"Origin": "http://page.example"})
    assert lst.json() == [setup.index]
    assert lst.headers["Access-Control-Allow-Origin"] == "http://page.example"
    ids = [int(src.ids[3]), int(src.ids[4000]), 123456789]
    meta = served.post("/metadata", {"ids": ids, "indice_name": setup.index}).json()
    assert [m["id"] for m in meta] == ids and meta[2]["metadata"] is None
    assert set(meta[0]["metadata"]) >= {"url", "caption", "NSFW"}
    assert meta[1]["metadata"]["NSFW"] == src.nsfw[4000]
    pre = served.get(
        "/knn-service",
        {
            "Origin": "http://x",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        method="OPTIONS",
    )
    assert pre.status == 200 and "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert pre.headers["Access-Control-Allow-Headers"] == "content-type"
    assert served.get("/healthz").status == 200
    metrics = served.get("/metrics").body.decode()
    assert 'clip_serve_requests_total{route="/knn-service",status="200"}' in metrics
    assert "clip_serve_request_seconds_bucket" in metrics


def bad_bodies(src: Source, index: str) -> list[tuple[bytes | dict[str, Any] | list[Any], int, str]]:
    good = {"embedding_input": src.img[0].tolist(), "modality": "image", "num_images": 5, "indice_name": index}
    nan = b'{"modality":"image","num_images":3,"embedding_input":[NaN, 1.0]}'
    return [
        (b"{not json", 400, "not valid JSON"),
        ([1, 2], 400, "JSON object"),
        ({k: v for k, v in good.items() if k != "modality"}, 400, "modality is required"),
        ({**good, "modality": "audio"}, 400, "modality must be"),
        ({**good, "indice_name": "laion5B'; DROP TABLE x"}, 404, "unknown indice_name"),
        ({**good, "embedding_input": src.img[0][:100].tolist()}, 400, "100 values"),
        ({**good, "embedding_input": ["0.1"] * 512}, 400, "embedding_input[0]"),
        ({**good, "embedding_input": [1e300] * 512}, 400, "finite float32"),
        (nan, 400, "NaN"),
        ({**good, "num_images": 100000}, 400, "max_limit_for_vector_search_queries"),
        ({**good, "num_images": -1}, 400, "positive integer"),
        ({**good, "num_images": "40; SELECT 1"}, 400, "positive integer"),
        ({**good, "embedding_input": None}, 400, "give one of"),
        ({**good, "image": "!!!notbase64", "embedding_input": None}, 400, "image"),
        ({**good, "image_url": "http://127.0.0.1:1/x.png", "embedding_input": None}, 403, "--allow-image-urls"),
        ({**good, "deduplicate": "yes"}, 400, "true or false"),
    ]


def test_bad_input_is_one_line_4xx_and_the_service_stays_up(setup: Setup) -> None:
    served = setup.served
    for body, status, words in bad_bodies(setup.src, setup.index):
        reply = served.post("/knn-service", body)
        assert reply.status == status, (body if isinstance(body, bytes) else str(body)[:80], reply.body)
        assert reply.body.count(b"\n") == 0 and words in reply.json()["error"], reply.body
    for body in (b"[", {"ids": "1,2"}, {"ids": [1, "2"]}, {"ids": [2**70]}):
        reply = served.post("/metadata", body)
        assert reply.status == 400, reply.body
    huge = b'{"modality":"image","num_images":1,"text":"' + b"a" * (9 * 1024 * 1024) + b'"}'
    reply = served.post("/knn-service", huge)
    assert reply.status == 413 and "limit" in reply.json()["error"]
    assert served.get("/nope").status == 404
    assert served.get("/knn-service").status == 405
    assert served.get("/healthz").status == 200
    assert served.proc.poll() is None
    metrics = served.get("/metrics").body.decode()
    assert 'status="500"' not in metrics and "Traceback" not in served.log_text()


def test_text_without_weights_is_400_naming_weights(setup: Setup, tmp_path: Path) -> None:
    if setup.engine == "chdb":
        pytest.skip("a chdb directory is one process at a time; the 26.9 run covers a second service")
    args = setup.served.proc.args[4:]  # type: ignore[index]
    args = [a for a in args if a not in ("--weights", "random")]
    drop = args.index("--port")
    args = args[:drop] + args[drop + 2 :]
    second = start_serve(args, tmp_path / "serve.log", env={"LAION_INGEST_CLIP_WEIGHTS": ""})
    try:
        reply = second.post("/knn-service", {"text": "a cat", "modality": "image", "num_images": 3})
        assert reply.status == 400 and "--weights" in reply.json()["error"]
        good = {"embedding_input": setup.src.img[2].tolist(), "modality": "image", "num_images": 3}
        assert second.post("/knn-service", good).json()[0]["id"] == int(setup.src.ids[2])
        image = {"image": base64.b64encode(b"x").decode(), "modality": "image", "num_images": 3}
        assert second.post("/knn-service", image).status == 400
    finally:
        second.proc.terminate()
        second.proc.wait(timeout=30)


def test_readonly_1_user_is_refused_in_one_line(setup: Setup, tmp_path: Path) -> None:
    """readonly=1 forbids every query setting: the service says so at start (readonly=2 is what it needs)."""
    if setup.engine == "chdb":
        pytest.skip("users exist on servers")
    from cli_run import cli as run_cli

    args = list(setup.served.proc.args[4:])  # type: ignore[index]
    args[args.index("searcher")] = "strict"
    drop = args.index("--port")
    args = args[:drop] + args[drop + 2 :]
    res = run_cli("serve", "--port", "0", *args, timeout=120)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "readonly=2" in lines[0], res.stderr


def test_image_bytes_that_are_not_an_image_are_400(setup: Setup) -> None:
    body = {"image": base64.b64encode(io.BytesIO(b"GIF89a-not-really").getvalue()).decode(), "modality": "image"}
    reply = setup.served.post("/knn-service", {**body, "num_images": 3})
    assert reply.status == 400 and "image" in reply.json()["error"]


def test_filtered_search_recall_against_exact_filtered_brute_force(setup: Setup) -> None:
    """use_safety_model filters inside the query (postfilter with a fetch multiplier sized by the share of rows that
    pass, exact prefilter when that kept too few): num_images rows come back and recall@k is high."""
    src, k = setup.src, 40
    rng = np.random.default_rng(5)
    recalls = []
    for pos in rng.choice(len(src.ids), size=20, replace=False):
        q = src.img[pos]
        body = {"embedding_input": q.tolist(), "modality": "image", "num_images": k, "use_safety_model": True}
        got = setup.served.post("/knn-service", body).json()
        assert len(got) == k and all(r["NSFW"] == SAFE for r in got)
        exact = set(src.exact(q.astype(np.float64), "image", k, safe_only=True))
        recalls.append(len({r["id"] for r in got} & exact) / k)
    mean = float(np.mean(recalls))
    print(
        f"\n[{setup.engine}] filtered recall@{k} (use_safety_model, {len(recalls)} queries): "
        f"mean {mean:.3f}, min {min(recalls):.3f}"
    )
    assert mean >= 0.9 and min(recalls) >= 0.75


def test_image_url_only_when_allowed_within_size_and_time(setup: Setup, tmp_path: Path) -> None:
    """--allow-image-urls: an image on loopback is fetched and searched; one over the size limit and one that
    never answers are 400s in one line; the service stays up."""
    if setup.engine == "chdb":
        pytest.skip("a chdb directory is one process at a time; the 26.9 run covers a second service")
    import socket
    import subprocess
    import sys

    from PIL import Image
    from server_fixtures import free_ports

    files = tmp_path / "files"
    files.mkdir()
    Image.fromarray(np.full((40, 40, 3), 200, dtype=np.uint8)).save(files / "ok.png")
    (files / "big.png").write_bytes(b"\x89PNG" + b"\0" * 300_000)
    port = free_ports(1)[0]
    static = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(files), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    mute = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    mute.bind(("127.0.0.1", 0))
    mute.listen(8)
    args = list(setup.served.proc.args[4:])  # type: ignore[index]
    drop = args.index("--port")
    args = args[:drop] + args[drop + 2 :]
    limits = ["--allow-image-urls", "--image-url-max-bytes", "200000", "--image-url-timeout", "2"]
    try:
        with serving([*args, *limits], tmp_path / "serve.log") as second:
            body = {"modality": "image", "num_images": 3, "indice_name": setup.index}
            deadline = time.monotonic() + 30
            while True:
                ok = second.post("/knn-service", {**body, "image_url": f"http://127.0.0.1:{port}/ok.png"})
                if ok.status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)  # the static server may still be starting
            assert ok.status == 200 and len(ok.json()) == 3, ok.body
            big = second.post("/knn-service", {**body, "image_url": f"http://127.0.0.1:{port}/big.png"})
            assert big.status == 400 and "200000-byte limit" in big.json()["error"]
            slow = second.post("/knn-service", {**body, "image_url": f"http://127.0.0.1:{mute.getsockname()[1]}/x"})
            assert slow.status == 400 and "within 2 s" in slow.json()["error"]
            gopher = second.post("/knn-service", {**body, "image_url": "file:///etc/passwd"})
            assert gopher.status == 400 and "http://" in gopher.json()["error"]
            assert second.get("/healthz").status == 200
    finally:
        mute.close()
        static.kill()
        static.wait()


def test_old_server_is_refused_in_one_line(ch_server: Any) -> None:
    """ClickHouse 18.16 has no cosineDistance and no vector index: serve says so at start, in one line."""
    res = cli("serve", "--port", "0", "--target", ch_server.http_url, "--user", "default", timeout=120)
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and ">= 25.8" in lines[0], res.stderr
