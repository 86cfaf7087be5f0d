"""OpenAI CLIP's image transform with Pillow and numpy only (torchvision does not import beside our torch).

Same steps, same order as `clip._transform(224)`: bicubic resize of the shorter side to 224, centre crop
224x224, convert to RGB, scale to [0, 1], normalise per channel.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

IMAGE_SIZE = 224
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


class ImageInputError(Exception):
    """One input row names no usable image; the row is answered with a zero vector."""


def resized_size(width: int, height: int, size: int = IMAGE_SIZE) -> tuple[int, int]:
    """Shorter side to `size`, longer side scaled and truncated to int, as torchvision's Resize(int)."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def crop_box(width: int, height: int, size: int = IMAGE_SIZE) -> tuple[int, int, int, int]:
    """torchvision's CenterCrop box: offsets rounded half to even, like its `int(round(...))`."""
    left = round((width - size) / 2.0)
    top = round((height - size) / 2.0)
    return left, top, left + size, top + size


def transform(image: Image.Image) -> npt.NDArray[np.float32]:
    """A decoded image to the [3, 224, 224] float32 array the vision tower expects."""
    target = resized_size(*image.size)
    if image.size != target:
        image = image.resize(target, Image.Resampling.BICUBIC)
    image = image.crop(crop_box(*image.size)).convert("RGB")
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    normalised = (pixels - MEAN) / STD
    return np.ascontiguousarray(normalised.transpose(2, 0, 1))


def load_image(path: str) -> npt.NDArray[np.float32]:
    """Open, decode and transform one image file; every failure becomes an ImageInputError with its cause."""
    if not os.path.exists(path):
        raise ImageInputError("no such file")
    if os.path.isdir(path):
        raise ImageInputError("is a directory")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a decompression-bomb warning would be noise on the UDF's stderr
            with Image.open(path) as image:
                image.load()
                return transform(image)
    except UnidentifiedImageError:
        raise ImageInputError("not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageInputError(f"cannot decode: {exc}") from None
