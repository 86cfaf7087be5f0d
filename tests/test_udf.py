"""The CLIP executable-UDF programs, run as ClickHouse runs them: a subprocess fed TabSeparated lines.

Each program process loads a 151M-parameter model (a few seconds), so the programs are started a handful of
times and each run is checked for several properties at once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("PIL")
pytest.importorskip("instant_clip_tokenizer")

import torch
from PIL import Image

from ingest.udf import model as clip_model
from ingest.udf import program, weights
from ingest.udf.preprocess import crop_box, load_image, resized_size, transform
from ingest.udf.tokenizer import END_OF_TEXT, START_OF_TEXT, ClipTokenizer

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 180
# Input lines as ClickHouse sends them (TSV-escaped). Row 3 is empty; rows 1 and 7 are the same text;
# row 4's `\t` is an escaped tab, which cleaning turns into the space of row 5; row 6 is an escaped backslash.
TEXT_LINES = [
    b"a diagram",
    b"a photo of a dog",
    b"",
    b"a\\tdog",
    b"a dog",
    b"a\\\\tdog",
    b"a diagram",
    "caf\u00e9 \U0001f600 \\'quoted\\'".encode(),
]


def run(*args: str, stdin: bytes = b"", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """`python -m ingest.udf.program ARGS` from the repository root, as a separate process."""
    base = {key: value for key, value in os.environ.items() if key != program.WEIGHTS_ENV}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), base.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "ingest.udf.program", *args],
        input=stdin,
        capture_output=True,
        cwd=REPO,
        env={**base, **(env or {})},
        timeout=TIMEOUT,
        check=False,
    )


def vectors(stdout: bytes) -> list[np.ndarray]:
    """Each answer line parsed; the Array(Float32) literal is also valid JSON."""
    return [np.array(json.loads(line), dtype=np.float32) for line in stdout.decode().splitlines()]


def stdin_of(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


@pytest.fixture(scope="module")
def random_text_run() -> subprocess.CompletedProcess[bytes]:
    return run("text", "--weights", "random", stdin=stdin_of(TEXT_LINES))


@pytest.fixture(scope="module")
def random_model() -> clip_model.ClipModel:
    return clip_model.random_model()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, random_model: clip_model.ClipModel) -> Iterator[Path]:
    """The random model's state dict saved as-is (`good.pt`) and with one tensor reshaped (`bad.pt`)."""
    folder = tmp_path_factory.mktemp("weights")
    state = dict(random_model.state_dict())
    torch.save(state, folder / "good.pt")
    state["visual.conv1.weight"] = state["visual.conv1.weight"].reshape(768, 3, 1024)
    torch.save(state, folder / "bad.pt")
    yield folder
    shutil.rmtree(folder)  # 1.2 GB: do not leave it to pytest's retention of old temp dirs


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    gradient = np.linspace(0, 255, 300 * 200 * 3).reshape(200, 300, 3).astype(np.uint8)
    paths = {
        "rgb": folder / "rgb.png",
        "gray": folder / "gray.jpg",
        "tab": folder / "with\ttab.png",
        "text": folder / "notes.txt",
        "missing": folder / "missing.png",
    }
    Image.fromarray(gradient).save(paths["rgb"])
    Image.fromarray(gradient[:, :, 0].T.copy()).save(paths["gray"])
    Image.new("RGBA", (50, 80), (10, 200, 30, 128)).save(paths["tab"])
    paths["text"].write_text("not an image\n")
    return paths


# --- tokenizer, TSV, reader, preprocessing: in-process and fast ---


def test_tokenizer_matches_clip_for_a_known_phrase() -> None:
    rows = ClipTokenizer().tokenize(["a diagram"])
    assert rows.shape == (1, 77) and rows.dtype == np.int64
    assert rows[0, :4].tolist() == [49406, 320, 22697, 49407]
    assert not rows[0, 4:].any()


def test_tokenizer_cleans_like_clip_and_truncates_to_77() -> None:
    tokenizer = ClipTokenizer()
    assert tokenizer.encode("  A\tDIAGRAM &amp;amp; ") == tokenizer.encode("a diagram &")
    assert tokenizer.encode("x <|endoftext|>") == [*tokenizer.encode("x"), END_OF_TEXT]
    long = tokenizer.tokenize(["dog " * 200])[0]
    assert long[0] == START_OF_TEXT and long[-1] == END_OF_TEXT and (long != 0).all()


@pytest.mark.parametrize(
    ("escaped", "raw"),
    [
        (b"plain", b"plain"),
        (b"a\\tb\\nc\\\\d", b"a\tb\nc\\d"),
        (b"it\\'s", b"it's"),
        (b"\\0\\b\\f\\r\\x41", b"\0\b\f\rA"),
        (b"\\\\t", b"\\t"),
        (b"\\q", b"q"),
    ],
)
def test_tsv_unescape(escaped: bytes, raw: bytes) -> None:
    assert program.unescape_tsv(escaped) == raw


def test_line_reader_answers_what_is_there_without_waiting_for_a_full_batch() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb", buffering=0) as stream:
        os.write(write_end, b"one\ntwo\nthr")
        reader = program.LineReader(stream)
        assert reader.next_batch(64) == [b"one", b"two"]  # the writer is still open: must not block
        os.write(write_end, b"ee")
        os.close(write_end)
        assert reader.next_batch(64) == [b"three"]  # last line without its newline
        assert reader.next_batch(64) == []


def test_preprocess_geometry_follows_torchvision() -> None:
    assert resized_size(300, 200) == (336, 224)
    assert resized_size(200, 301) == (224, 337)
    assert resized_size(224, 224) == (224, 224)
    assert crop_box(337, 224) == (56, 0, 280, 224)  # (337 - 224) / 2 = 56.5 rounds half to even
    assert crop_box(224, 339) == (0, 58, 224, 282)


def test_preprocess_normalises_with_clip_mean_and_std() -> None:
    pixels = transform(Image.new("L", (500, 230), 255))
    assert pixels.shape == (3, 224, 224) and pixels.dtype == np.float32
    expected = (1.0 - np.array([0.48145466, 0.4578275, 0.40821073])) / [0.26862954, 0.26130258, 0.27577711]
    np.testing.assert_allclose(pixels[:, 100, 100], expected, rtol=1e-6)


# --- weights files ---


def test_weights_key_mapping_for_open_clip_checkpoints() -> None:
    tensor = torch.zeros(2, dtype=torch.float16)
    raw = {"state_dict": {"module.text.token_embedding.weight": tensor, "module.visual.proj": tensor}}
    state = weights.normalise_keys(raw, "x.pt")
    assert set(state) == {"token_embedding.weight", "visual.proj"}


def test_safetensors_reader(tmp_path: Path) -> None:
    data = np.arange(6, dtype=np.float16).reshape(2, 3)
    header = json.dumps({"w": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 12]}}).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + data.tobytes())
    np.testing.assert_array_equal(weights.read_safetensors(str(path))["w"].numpy(), data)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit: OpenAI's checkpoint is TorchScript
def test_torchscript_archive_is_read_and_checked(tmp_path: Path) -> None:
    class Visual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 768, 16, 16, bias=False)  # ViT-B/16's patch, not B/32's

    class Holder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual = Visual()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.visual.conv1(x)
            return out

    path = tmp_path / "jit.pt"
    torch.jit.trace(Holder(), torch.zeros(1, 3, 32, 32)).save(str(path))  # type: ignore[no-untyped-call]
    with pytest.raises(weights.WeightsError, match=r"has shape \(768, 3, 16, 16\), expected \(768, 3, 32, 32\)"):
        weights.load_model(str(path))


# --- the programs ---


def test_text_program_answers_every_line(random_text_run: subprocess.CompletedProcess[bytes]) -> None:
    assert random_text_run.returncode == 0, random_text_run.stderr
    rows = vectors(random_text_run.stdout)
    assert len(rows) == len(TEXT_LINES)
    assert all(row.shape == (512,) for row in rows)
    norms = [float(np.linalg.norm(row)) for row in rows]
    assert norms[2] == 0.0  # the empty line
    assert all(abs(norm - 1) < 1e-5 for i, norm in enumerate(norms) if i != 2)
    np.testing.assert_array_equal(rows[0], rows[6])
    np.testing.assert_array_equal(rows[3], rows[4])  # escaped tab == a space after cleaning
    assert not np.array_equal(rows[5], rows[4])  # an escaped backslash is not a tab
    assert not np.array_equal(rows[0], rows[1])
    errors = random_text_run.stderr.decode().splitlines()
    assert errors == ["encode-text: input line 3 '': empty text; answered a zero vector"]


def test_text_program_is_deterministic_across_processes(
    random_text_run: subprocess.CompletedProcess[bytes],
) -> None:
    again = run("text", "--weights", "random", "--batch-lines", "1", stdin=stdin_of(TEXT_LINES))
    assert again.returncode == 0, again.stderr
    assert again.stdout == random_text_run.stdout


def test_laion_ingest_encode_text_command(random_text_run: subprocess.CompletedProcess[bytes]) -> None:
    cli = Path(sys.executable).with_name("laion-ingest")
    if not cli.exists():
        pytest.skip("the laion-ingest command is not installed in this environment")
    result = subprocess.run(
        [str(cli), "encode-text", "--weights", "random"],
        input=stdin_of(TEXT_LINES[:2]),
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # batching (the command's --batch-lines) may move float32 results by an ulp or so, nothing more
    np.testing.assert_allclose(vectors(result.stdout), vectors(random_text_run.stdout)[:2], atol=1e-6)


def test_image_program_answers_bad_rows_with_zeros_and_goes_on(
    images: dict[str, Path], random_model: clip_model.ClipModel
) -> None:
    paths = [images["rgb"], images["missing"], images["text"], None, images["tab"], images["gray"], images["rgb"]]
    lines = [b"" if p is None else os.fsencode(p).replace(b"\t", b"\\t") for p in paths]
    result = run("image", "--weights", "random", stdin=stdin_of(lines))
    assert result.returncode == 0, result.stderr
    rows = vectors(result.stdout)
    assert len(rows) == 7 and all(row.shape == (512,) for row in rows)
    for i in (1, 2, 3):
        assert not rows[i].any()
    for i in (0, 4, 5, 6):
        assert abs(float(np.linalg.norm(rows[i])) - 1) < 1e-5
    np.testing.assert_array_equal(rows[0], rows[6])
    errors = result.stderr.decode().splitlines()
    assert len(errors) == 3, errors
    assert errors[0].startswith("encode-image: input line 2 ") and "missing.png" in errors[0]
    assert "no such file" in errors[0]
    assert "input line 3 " in errors[1] and "notes.txt" in errors[1] and "not an image" in errors[1]
    assert "input line 4 ''" in errors[2] and "empty path" in errors[2]
    # the same weights and pixels in this process give the same vector as the program did
    encoder = program.ImageEncoder(random_model)
    np.testing.assert_allclose(encoder.encode([load_image(str(images["rgb"]))])[0], rows[0], atol=1e-6)


def test_saved_state_dict_loads_back_and_gives_identical_output(
    checkpoints: Path, random_text_run: subprocess.CompletedProcess[bytes]
) -> None:
    result = run("text", "--weights", str(checkpoints / "good.pt"), stdin=stdin_of(TEXT_LINES))
    assert result.returncode == 0, result.stderr
    assert result.stdout == random_text_run.stdout


def test_weights_with_a_wrong_shape_are_refused_in_one_line(checkpoints: Path) -> None:
    path = checkpoints / "bad.pt"
    result = run("text", "--weights", str(path), stdin=b"a dog\n")
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode() == (
        f"encode-text: weights {path}: tensor visual.conv1.weight has shape (768, 3, 1024), expected (768, 3, 32, 32)\n"
    )


def test_weights_come_from_the_flag_or_the_environment() -> None:
    result = run("image", stdin=b"x.png\n")
    assert result.returncode == 1
    assert b"no weights: pass --weights PATH or --weights random" in result.stderr
    result = run("text", stdin=b"a dog\n", env={program.WEIGHTS_ENV: "/nonexistent/clip.pt"})
    assert result.returncode == 1
    assert result.stderr.decode() == "encode-text: weights /nonexistent/clip.pt: no such file\n"


def test_importing_the_programs_does_not_import_torch() -> None:
    code = "import sys, ingest.udf.program; assert not {'torch', 'PIL'} & set(sys.modules), sys.modules.keys()"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr


def test_clickhouse_loads_the_udf_configs(
    tmp_path: Path, images: dict[str, Path], random_text_run: subprocess.CompletedProcess[bytes]
) -> None:
    """Our XML files, with only <command> pointed at this checkout, served by ClickHouse itself (chdb)."""
    pytest.importorskip("chdb")
    for kind in ("text", "image"):
        config = (REPO / "config" / f"encode_{kind}_function.xml").read_text()
        command = f"cd {REPO} &amp;&amp; {sys.executable} -m ingest.udf.program {kind} --weights random"
        config, count = re.subn(r"<command>[^<]*</command>", f"<command>{command}</command>", config)
        assert count == 1
        (tmp_path / f"encode_{kind}_function.xml").write_text(config)
    query = f"""
        SELECT encode_text('a diagram') AS t, encode_text('') AS empty,
               encode_image('{images["rgb"]}') AS i, encode_image('/nonexistent.png') AS missing
        FORMAT JSONEachRow"""
    script = textwrap.dedent(f"""
        import chdb
        print(chdb.query({query!r}, "JSONEachRow", udf_path={str(tmp_path)!r}))
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout.decode().strip().splitlines()[0])
    np.testing.assert_array_equal(np.array(row["t"], dtype=np.float32), vectors(random_text_run.stdout)[0])
    assert row["empty"] == [0] * 512 and row["missing"] == [0] * 512
    assert abs(float(np.linalg.norm(row["i"])) - 1) < 1e-5
