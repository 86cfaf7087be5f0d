"""The CLIP encoder of `ingest/udf`, loaded once per process, for `text` / `image` / `image_url` queries.

Torch runs in one worker thread: the event loop keeps answering `embedding_input` queries while a text or an
image is encoded, and two encodes never compete for the same two cores. Torch is imported only when weights are
given (`--weights`), so a service that answers vectors only starts in a blink and needs no clip extra.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from ingest.core.errors import BadRequestError, ConfigError

NO_WEIGHTS = "this service has no CLIP weights: text and image queries need `laion-ingest serve --weights PATH`"
MAX_IMAGE_PIXELS = 64_000_000


class ClipEncoder:
    """Texts and image bytes → L2-normalised 512-d float32 vectors."""

    def __init__(self, weights: str) -> None:
        self._weights = weights
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clip")
        self._text: Any = None
        self._image: Any = None

    def load(self) -> None:
        """Load the model and tokenizer (seconds); a bad checkpoint is one ConfigError line."""
        from ingest.udf.program import ImageEncoder, ProgramError, TextEncoder, load_model, load_tokenizer

        try:
            model = load_model(self._weights)
            self._text = TextEncoder(model, load_tokenizer())
            self._image = ImageEncoder(model)
            import PIL  # noqa: F401  (fail at start, not on the first image query)
        except ProgramError as exc:
            raise ConfigError(f"--weights: {exc}") from None
        except ImportError as exc:
            raise ConfigError(
                f"--weights needs the clip extra ({exc.name}): pip install 'laion-ingest[clip]'"
            ) from None

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._pool, self.load)

    async def text(self, text: str) -> npt.NDArray[np.float32]:
        return await self._run(self._encode_text, text)

    async def image(self, data: bytes) -> npt.NDArray[np.float32]:
        return await self._run(self._encode_image, data)

    async def _run(self, fn: Any, arg: Any) -> npt.NDArray[np.float32]:
        out: npt.NDArray[np.float32] = await asyncio.get_running_loop().run_in_executor(self._pool, fn, arg)
        return out

    def _encode_text(self, text: str) -> npt.NDArray[np.float32]:
        return np.asarray(self._text.encode([text])[0], dtype=np.float32)

    def _encode_image(self, data: bytes) -> npt.NDArray[np.float32]:
        pixels = decode_image(data)
        return np.asarray(self._image.encode([pixels])[0], dtype=np.float32)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def decode_image(data: bytes) -> npt.NDArray[np.float32]:
    """Image bytes → CLIP's input array; anything Pillow cannot decode is the client's error, said in one line."""
    from PIL import Image, UnidentifiedImageError

    from ingest.udf.preprocess import transform

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.size[0] * image.size[1] > MAX_IMAGE_PIXELS:
                    raise BadRequestError(f"the image has {image.size[0]}×{image.size[1]} pixels: too large")
                image.load()
                return transform(image)
    except UnidentifiedImageError:
        raise BadRequestError("the image is not in a format Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadRequestError(f"the image cannot be decoded: {' '.join(str(exc).split())[:120]}") from None


def b64_image(value: str) -> bytes:
    """`image`: the base64 text ClipClient and clip-front send (a `data:...;base64,` prefix is tolerated)."""
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        raise BadRequestError("image is not valid base64") from None
