"""The CLIP encoder as a subprocess: a text or an image in, its vector out.

It speaks the contract ClickHouse's executable UDFs use (`ingest.udf.program`): one TSV-escaped value per stdin
line, one `[f1,...]` line back, so search uses the very program the server runs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from pathlib import Path
from typing import Literal

import orjson

from ingest.clickhouse.vector_sql import tsv_escape
from ingest.core.errors import IngestError, UsageError

WEIGHTS_ENV = "LAION_INGEST_CLIP_WEIGHTS"
ENCODER_TIMEOUT_SECONDS = 600.0
CLIP_EXTRA_HINT = "install the clip extra: pip install .[clip]"


def torch_installed() -> bool:
    """Look for torch without importing it (seconds of startup we would not use)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def encoder_argv(kind: Literal["text", "image"], weights: str) -> list[str]:
    return [sys.executable, "-m", "ingest.udf.program", kind, "--weights", weights]


async def encode(kind: Literal["text", "image"], value: str, weights: str | None) -> list[float]:
    """One value through the CLIP encoder program → its vector."""
    if not torch_installed():
        raise UsageError(f"--{kind} needs the CLIP encoder, and torch is not installed: {CLIP_EXTRA_HINT}")
    chosen = weights or os.environ.get(WEIGHTS_ENV, "")
    if not chosen:
        raise UsageError(
            f"--{kind} needs CLIP weights: pass --weights PATH (or --weights random), or set {WEIGHTS_ENV}"
        )
    if kind == "image":
        path = Path(value)
        if not path.is_file():
            raise UsageError(f"--image {value}: no such file")
        value = str(path.resolve())
    try:
        proc = await asyncio.create_subprocess_exec(
            *encoder_argv(kind, chosen),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise IngestError(f"cannot start the {kind} encoder: {exc.strerror}") from exc
    try:
        out, err = await asyncio.wait_for(
            proc.communicate((tsv_escape(value) + "\n").encode()), ENCODER_TIMEOUT_SECONDS
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise IngestError(f"the {kind} encoder did not answer within {ENCODER_TIMEOUT_SECONDS:.0f} s") from None
    problem = last_line(err)
    if proc.returncode != 0:
        raise IngestError(f"the {kind} encoder failed (exit {proc.returncode}): {problem or 'no message'}")
    vector = parse_encoder_output(out, kind)
    if not any(vector):
        raise UsageError(f"the {kind} encoder could not use {value!r}: {problem or 'it answered a zero vector'}")
    return vector


def last_line(data: bytes) -> str:
    lines = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def parse_encoder_output(out: bytes, kind: str) -> list[float]:
    first = out.split(b"\n", 1)[0].strip()
    try:
        doc = orjson.loads(first)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, list) or not doc or not all(isinstance(x, int | float) for x in doc):
        raise IngestError(f"the {kind} encoder answered {first[:60]!r}, not a vector")
    return [float(x) for x in doc]
