"""The `encode-text` / `encode-image` executable-UDF programs: TabSeparated values in, Array(Float32) out.

ClickHouse writes one value per line and waits for exactly as many answer lines, so every input line gets
one: an L2-normalised 512-d vector `[f1,...,f512]`, or a 512-d zero vector (plus one stderr line naming the
input) when the input is unusable. The model loads once per process; answers are flushed per batch. Torch,
Pillow and the tokenizer are imported only once a program runs, never at module import.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, BinaryIO, TypeVar

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from ingest.udf.model import ClipModel
    from ingest.udf.tokenizer import ClipTokenizer

TEXT_PROGRAM = "encode-text"
IMAGE_PROGRAM = "encode-image"
WEIGHTS_ENV = "LAION_INGEST_CLIP_WEIGHTS"
DIM = 512
IMAGE_BATCH = 16  # images per forward pass at most, taken only from lines already waiting
ZERO_LINE = b"[" + b",".join([b"0"] * DIM) + b"]\n"
EXIT_OK = 0
EXIT_FAILED = 1

_ESCAPE = re.compile(rb"\\(x[0-9A-Fa-f]{2}|.)", re.DOTALL)
_ESCAPED = {b"b": b"\b", b"f": b"\f", b"r": b"\r", b"n": b"\n", b"t": b"\t", b"0": b"\0", b"a": b"\a", b"v": b"\v"}

Vectors = npt.NDArray[np.float32]
T = TypeVar("T")


class BadInput(Exception):
    """One row that cannot be encoded; it is answered with a zero vector and the process goes on."""


class ProgramError(Exception):
    """The program cannot start (no weights, bad weights, missing extra): one stderr line, exit 1."""


def unescape_tsv(field: bytes) -> bytes:
    """Undo TabSeparated escaping (`\\t`, `\\n`, `\\\\`, `\\'`, `\\xHH`...); an unknown `\\c` is `c`."""

    def replace(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if len(code) == 3:
            return bytes([int(code[1:], 16)])
        return _ESCAPED.get(code, code)

    return _ESCAPE.sub(replace, field) if b"\\" in field else field


def format_vector(vector: Vectors) -> bytes:
    """An Array(Float32) literal; numpy's shortest float32 repr keeps each value exact and short."""
    return ("[" + ",".join([str(value) for value in vector]) + "]\n").encode()


class LineReader:
    """Input lines in batches of at most `limit`, waiting only while no complete line is at hand.

    ClickHouse sends a block and then waits for its answers, so a reader that waited for a full batch
    could deadlock; this one takes whatever complete lines are already readable.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._fd = _fileno(stream)
        self._buffer = bytearray()
        self._eof = False

    def next_batch(self, limit: int) -> list[bytes]:
        """Up to `limit` lines without their newline; an empty list once the input is exhausted."""
        while not self._eof:
            lines = self._buffer.count(b"\n")
            if lines >= limit or (lines and not self._readable()):
                break
            self._fill()
        return self._take(limit)

    def _readable(self) -> bool:
        if self._fd is None:
            return True  # an in-memory stream never blocks
        ready, _, _ = select.select([self._fd], [], [], 0)
        return bool(ready)

    def _fill(self) -> None:
        chunk = os.read(self._fd, 1 << 16) if self._fd is not None else self._stream.read(1 << 16)
        if chunk:
            self._buffer += chunk
        else:
            self._eof = True

    def _take(self, limit: int) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        while len(lines) < limit:
            end = self._buffer.find(b"\n", start)
            if end < 0:
                break
            lines.append(bytes(self._buffer[start:end]))
            start = end + 1
        del self._buffer[:start]
        if not lines and self._eof and self._buffer:  # a last line without its newline
            lines.append(bytes(self._buffer))
            self._buffer.clear()
        return lines


def _fileno(stream: BinaryIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return None


def report(program: str, row: int, field: bytes, reason: str) -> None:
    """One stderr line per bad row, naming the row number and its value."""
    shown = field.decode("utf-8", "replace")
    shown = shown if len(shown) <= 120 else shown[:117] + "..."
    reason = " ".join(reason.split())
    print(f"{program}: input line {row} {shown!r}: {reason}; answered a zero vector", file=sys.stderr, flush=True)


def serve(
    program: str,
    prepare: Callable[[bytes], T],
    encode: Callable[[list[T]], Vectors],
    limit: int,
    stdin: BinaryIO,
    stdout: BinaryIO,
) -> None:
    """The UDF loop: read a batch, prepare each row (BadInput → zero vector), encode the rest, answer all."""
    reader = LineReader(stdin)
    row = 0
    while batch := reader.next_batch(limit):
        inputs: list[T | None] = []
        for raw in batch:
            row += 1
            field = unescape_tsv(raw)
            try:
                inputs.append(prepare(field))
            except BadInput as exc:
                report(program, row, field, str(exc))
                inputs.append(None)
        good = [value for value in inputs if value is not None]
        vectors = iter(encode(good)) if good else iter(())
        stdout.write(b"".join(ZERO_LINE if v is None else format_vector(next(vectors)) for v in inputs))
        stdout.flush()


class TextEncoder:
    """Texts to normalised text-tower features, one forward pass per batch."""

    def __init__(self, model: ClipModel, tokenizer: ClipTokenizer) -> None:
        self._model = model
        self._tokenizer = tokenizer

    @staticmethod
    def prepare(field: bytes) -> str:
        text = field.decode("utf-8", "replace")
        if not text.strip():
            raise BadInput("empty text")
        return text

    def encode(self, texts: list[str]) -> Vectors:
        import torch

        tokens = torch.from_numpy(self._tokenizer.tokenize(texts))
        with torch.inference_mode():
            features = torch.nn.functional.normalize(self._model.encode_text(tokens), dim=-1)
        return features.numpy()


class ImageEncoder:
    """Image files to normalised vision-tower features."""

    def __init__(self, model: ClipModel) -> None:
        self._model = model

    @staticmethod
    def prepare(field: bytes) -> npt.NDArray[np.float32]:
        from ingest.udf.preprocess import ImageInputError, load_image

        if not field.strip():
            raise BadInput("empty path")
        try:
            return load_image(os.fsdecode(field))
        except ImageInputError as exc:
            raise BadInput(str(exc)) from None

    def encode(self, images: list[npt.NDArray[np.float32]]) -> Vectors:
        import torch

        pixels = torch.from_numpy(np.stack(images))
        with torch.inference_mode():
            features = torch.nn.functional.normalize(self._model.encode_image(pixels), dim=-1)
        return features.numpy()


def resolve_weights(weights: str | None) -> str:
    """`--weights` if given, else $LAION_INGEST_CLIP_WEIGHTS; there is deliberately no default."""
    chosen = weights or os.environ.get(WEIGHTS_ENV, "")
    if not chosen:
        raise ProgramError(f"no weights: pass --weights PATH or --weights random (or set {WEIGHTS_ENV})")
    return chosen


def load_model(weights: str) -> ClipModel:
    """Resolve and load the weights, mapping every failure to a one-line ProgramError."""
    path = resolve_weights(weights)
    try:
        from ingest.udf import weights as clip_weights
    except ImportError as exc:
        raise ProgramError(f"{exc.name or exc}: not installed; pip install 'laion-ingest[clip]'") from None
    try:
        return clip_weights.load_model(path)
    except clip_weights.WeightsError as exc:
        raise ProgramError(str(exc)) from None


def load_tokenizer() -> ClipTokenizer:
    from ingest.udf.tokenizer import ClipTokenizer, TokenizerUnavailable

    try:
        return ClipTokenizer()
    except TokenizerUnavailable as exc:
        raise ProgramError(str(exc)) from None


def run_encode_text(weights: str, batch_lines: int = 1) -> int:
    """`encode-text`: stdin texts → stdout vectors; `batch_lines` rows per forward pass at most."""

    def start() -> None:
        encoder = TextEncoder(load_model(weights), load_tokenizer())
        serve(TEXT_PROGRAM, encoder.prepare, encoder.encode, max(1, batch_lines), sys.stdin.buffer, sys.stdout.buffer)

    return _run(TEXT_PROGRAM, start)


def run_encode_image(weights: str) -> int:
    """`encode-image`: stdin image paths → stdout vectors, up to IMAGE_BATCH images per forward pass."""

    def start() -> None:
        try:
            import PIL  # noqa: F401  (fail before the model loads, not on the first row)
        except ImportError:
            raise ProgramError("Pillow: not installed; pip install 'laion-ingest[clip]'") from None
        encoder = ImageEncoder(load_model(weights))
        serve(IMAGE_PROGRAM, encoder.prepare, encoder.encode, IMAGE_BATCH, sys.stdin.buffer, sys.stdout.buffer)

    return _run(IMAGE_PROGRAM, start)


def _run(program: str, start: Callable[[], None]) -> int:
    """Exit codes and one-line errors for both programs: ClickHouse logs stderr, a traceback helps nobody."""
    try:
        start()
    except ProgramError as exc:
        print(f"{program}: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except BrokenPipeError:  # ClickHouse closed the pipe: nothing left to answer
        _silence_stdout()
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        print(f"{program}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    return EXIT_OK


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise on the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ingest.udf.program {text,image} --weights W`, for running the programs on their own."""
    parser = argparse.ArgumentParser(prog="python -m ingest.udf.program", description=__doc__)
    parser.add_argument("kind", choices=["text", "image"])
    parser.add_argument("--weights", default="", help=f"checkpoint path or 'random' (default ${WEIGHTS_ENV})")
    parser.add_argument("--batch-lines", type=int, default=1, help="texts per forward pass, at most")
    args = parser.parse_args(argv)
    if args.kind == "text":
        return run_encode_text(args.weights, args.batch_lines)
    return run_encode_image(args.weights)


if __name__ == "__main__":
    sys.exit(main())
