"""Load CLIP ViT-B/32 weights from a local file into `model.ClipModel`, or refuse them in one line.

Accepted: OpenAI's TorchScript archive (`ViT-B-32.pt`, fp16), a plain `torch.save`d state dict (OpenAI
names, e.g. saved from this model), open_clip checkpoints (`open_clip_pytorch_model.bin`, training
checkpoints with `state_dict` / `module.` prefixes, `text.` tower prefixes) and `.safetensors` files. Every
tensor is checked by name and shape before anything is assigned, so a wrong file never half-loads.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import torch

from ingest.core.errors import IngestError
from ingest.udf import model as clip_model

RANDOM = "random"
# Non-tensor entries found in real checkpoints: OpenAI's JIT attributes and open_clip's old causal mask.
_METADATA_KEYS = frozenset({"input_resolution", "context_length", "vocab_size", "attn_mask"})
_SAFETENSORS_DTYPES = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
}

StateDict = dict[str, torch.Tensor]


class WeightsError(IngestError):
    """A weights file that cannot be read or does not fit ViT-B/32: the program stops with exit code 1."""

    def __init__(self, path: str, reason: str) -> None:
        reason = " ".join(reason.split())  # torch's messages span lines; ClickHouse logs one line per error
        if len(reason) > 300:
            reason = reason[:297] + "..."
        super().__init__(f"weights {path}: {reason}")


def load_model(weights: str) -> clip_model.ClipModel:
    """`random` for the seeded test model, else a checkpoint path; returns an eval-mode fp32 model."""
    if weights == RANDOM:
        return clip_model.random_model()
    model = clip_model.ClipModel()
    load_into(model, read_state_dict(weights), weights)
    return model.eval()


def read_state_dict(path: str) -> StateDict:
    """Tensors of a checkpoint file under OpenAI's names, whatever the file's container format."""
    if not os.path.isfile(path):
        raise WeightsError(path, "no such file")
    try:
        raw = _read_container(path)
    except WeightsError:
        raise
    except Exception as exc:  # torch raises RuntimeError, pickle errors, EOFError... for a bad file
        raise WeightsError(path, f"not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    return normalise_keys(raw, path)


def _read_container(path: str) -> Mapping[str, object]:
    if _is_safetensors(path):
        return read_safetensors(path)
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        return dict(torch.jit.load(path, map_location="cpu").state_dict())  # type: ignore[no-untyped-call]
    # mmap: names and shapes are checked before any tensor data is read, so a wrong file fails fast
    loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    if not isinstance(loaded, Mapping):
        raise WeightsError(path, f"holds a {type(loaded).__name__}, not a state dict")
    return loaded


def _is_torchscript(path: str) -> bool:
    """A TorchScript archive has compiled code (`*/code/`) beside its tensors; a state dict does not."""
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.endswith("constants.pkl") for name in archive.namelist())


def _is_safetensors(path: str) -> bool:
    with open(path, "rb") as file:
        head = file.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")


def read_safetensors(path: str) -> StateDict:
    """The safetensors layout (u64 header size, JSON header, raw little-endian data), without its package."""
    tensors: StateDict = {}
    with open(path, "rb") as file:
        (header_size,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(header_size))
        base = 8 + header_size
        for name, info in header.items():
            if name != "__metadata__":
                tensors[name] = _read_safetensor(file, base, name, info)
    return tensors


def _read_safetensor(file: io.BufferedReader, base: int, name: str, info: dict[str, Any]) -> torch.Tensor:
    dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype is None:
        raise ValueError(f"tensor {name} has unsupported dtype {info['dtype']}")
    begin, end = info["data_offsets"]
    buffer = bytearray(end - begin)
    file.seek(base + begin)
    if file.readinto(buffer) != len(buffer):
        raise ValueError(f"tensor {name} is cut short")
    flat = torch.frombuffer(buffer, dtype=dtype) if buffer else torch.empty(0, dtype=dtype)
    return flat.reshape(info["shape"])


def normalise_keys(raw: Mapping[str, object], path: str) -> StateDict:
    """Unwrap training checkpoints, map open_clip's names onto OpenAI's, drop non-parameter entries."""
    nested = raw.get("state_dict")
    if isinstance(nested, Mapping):
        raw = nested
    tensors: StateDict = {}
    for key, value in raw.items():
        name = _openai_name(key)
        if name in _METADATA_KEYS:
            continue
        if not isinstance(value, torch.Tensor):
            raise WeightsError(path, f"entry {key} is a {type(value).__name__}, not a tensor")
        tensors[name] = value
    return tensors


def _openai_name(key: str) -> str:
    """open_clip's DDP (`module.`) and text-tower (`text.`) prefixes removed; OpenAI names pass through."""
    key = key.removeprefix("module.")
    return key.removeprefix("text.")


def load_into(model: clip_model.ClipModel, state: StateDict, path: str) -> None:
    """Check every name and shape against the architecture, then assign fp32 copies (strict).

    Copies, not the memory-mapped file: a checkpoint replaced in place under a running UDF process must not
    crash it (SIGBUS), and OpenAI's fp16 tensors need converting anyway.
    """
    check_shapes(model, state, path)
    fp32 = {name: tensor.to(torch.float32, copy=True) for name, tensor in state.items()}
    model.load_state_dict(fp32, strict=True, assign=True)


def check_shapes(model: clip_model.ClipModel, state: StateDict, path: str) -> None:
    """Refuse a checkpoint that is not ViT-B/32, naming the first tensor that does not fit."""
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for name, shape in expected.items():
        if name in state and tuple(state[name].shape) != shape:
            got = _shape(state[name].shape)
            raise WeightsError(path, f"tensor {name} has shape {got}, expected {_shape(shape)}")
    missing = [name for name in expected if name not in state]
    if missing:
        raise WeightsError(path, f"tensor {missing[0]} is missing{_more(missing)}; is it CLIP ViT-B/32?")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise WeightsError(path, f"unexpected tensor {unexpected[0]}{_more(unexpected)}; is it CLIP ViT-B/32?")


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""


def _shape(shape: tuple[int, ...] | torch.Size) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"
