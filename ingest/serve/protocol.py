"""clip-retrieval 2.45.0's request bodies (clip_back.py), parsed and validated: pure, no I/O.

clip-back reads `/knn-service` with `get_json(force=True)` and answers a KeyError or a bad value with a 500;
here every field is checked and a bad one is a BadRequestError (one line, a 4xx) before anything reaches SQL.
Which query input wins follows clip-back: a non-empty `text`, else `image`, else `image_url`, else
`embedding_input` (ClipClient sends all four keys, the unused ones as null).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from ingest.core.errors import BadRequestError

Modality = Literal["image", "text"]
MODALITY_COLUMNS: dict[str, str] = {"image": "image_embedding", "text": "text_embedding"}
IGNORED_HEADER = "X-Clip-Ignored-Options"
"""Names the options of the request that this back end accepted but cannot honour."""
CAPPED_HEADER = "X-Clip-Result-Ids-Capped"
"""Set when `num_result_ids` was above what the vector index serves: the value it was lowered to."""
MAX_METADATA_IDS = 10_000
FLOAT32_MAX = 3.4e38


@dataclass(frozen=True, slots=True)
class KnnRequest:
    """One `/knn-service` body after validation. Exactly one of text, image, image_url, vector is set."""

    modality: Modality
    indice_name: str | None
    num_images: int
    num_result_ids: int
    text: str | None = None
    image: str | None = None
    image_url: str | None = None
    vector: tuple[float, ...] | None = None
    deduplicate: bool = False
    use_safety_model: bool = False
    ignored: tuple[str, ...] = ()

    @property
    def column(self) -> str:
        return MODALITY_COLUMNS[self.modality]

    @property
    def input_kind(self) -> str:
        if self.text is not None:
            return "text"
        if self.image is not None:
            return "image"
        return "image_url" if self.image_url is not None else "embedding_input"


@dataclass(frozen=True, slots=True)
class MetadataRequest:
    ids: tuple[int, ...]
    indice_name: str | None


def json_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, whatever the Content-Type said (clip-back's `force=True`)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if b"NaN" in raw or b"Infinity" in raw:
            raise BadRequestError("the body holds NaN or Infinity: a query vector must be finite numbers") from None
        raise BadRequestError(f"the body is not valid JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise BadRequestError("the body must be a JSON object")
    return doc


def _int(doc: dict[str, Any], key: str, default: int | None = None) -> int:
    value = doc.get(key, default)
    if value is None:
        raise BadRequestError(f"{key} is required (a positive integer)")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequestError(f"{key} must be a positive integer, not {_show(value)}")
    return value


def _flag(doc: dict[str, Any], key: str) -> bool:
    value = doc.get(key, False)
    if value is None:
        return False
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise BadRequestError(f"{key} must be true or false, not {_show(value)}")


def _text(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequestError(f"{key} must be a string, not {_show(value)}")
    return value or None


def _show(value: object) -> str:
    text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode() if value is not None else "null"
    return text if len(text) <= 40 else text[:37] + "..."


def parse_vector(value: object) -> tuple[float, ...]:
    """`embedding_input`: a flat, non-empty list of finite numbers."""
    if not isinstance(value, list) or not value:
        raise BadRequestError("embedding_input must be a non-empty list of numbers")
    if all(type(x) is float for x in value):  # the common body, checked at C speed; else element by element below
        wide = np.asarray(value, dtype=np.float64)
        if np.isfinite(wide).all() and (np.abs(wide) <= FLOAT32_MAX).all():
            return tuple(value)
    out: list[float] = []
    for i, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or abs(x) > FLOAT32_MAX:
            raise BadRequestError(f"embedding_input[{i}] is {_show(x)}: expected a finite float32 number")
        out.append(float(x))
    return tuple(out)


def ignored_options(doc: dict[str, Any]) -> tuple[str, ...]:
    """Options clip-back honours with models or vectors we do not have: accepted, named back, not applied."""
    names = []
    if _flag(doc, "use_violence_detector"):
        names.append("use_violence_detector")
    if _flag(doc, "use_mclip"):
        names.append("use_mclip")
    for key in ("aesthetic_score", "aesthetic_weight"):
        value = doc.get(key, "")
        if value not in ("", None):
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise BadRequestError(f'{key} must be a number or "", not {_show(value)}')
            names.append(key)
    return tuple(names)


def parse_knn(doc: dict[str, Any], max_images: int) -> KnnRequest:
    """Validate a `/knn-service` body; `max_images` is the server's `max_limit_for_vector_search_queries`."""
    modality = doc.get("modality")
    if modality is None:
        raise BadRequestError('modality is required: "image" or "text"')
    if modality not in MODALITY_COLUMNS:
        raise BadRequestError(f'modality must be "image" or "text", not {_show(modality)}')
    num_images = _int(doc, "num_images")
    if num_images > max_images:
        raise BadRequestError(
            f"num_images {num_images} is over {max_images}, the server's max_limit_for_vector_search_queries"
        )
    num_result_ids = _int(doc, "num_result_ids", num_images)
    indice = doc.get("indice_name")
    if indice is not None and not isinstance(indice, str):
        raise BadRequestError(f"indice_name must be a string, not {_show(indice)}")
    text, image, image_url = _text(doc, "text"), _text(doc, "image"), _text(doc, "image_url")
    vector = None
    if text is not None:
        image = image_url = None
    elif image is not None:
        image_url = None
    elif image_url is None:
        raw = doc.get("embedding_input")
        if raw is None:
            raise BadRequestError("give one of text, image (base64), image_url, embedding_input")
        vector = parse_vector(raw)
    return KnnRequest(
        modality=modality,
        indice_name=indice,
        num_images=num_images,
        num_result_ids=max(num_result_ids, 1),
        text=text,
        image=image,
        image_url=image_url,
        vector=vector,
        deduplicate=_flag(doc, "deduplicate"),
        use_safety_model=_flag(doc, "use_safety_model"),
        ignored=ignored_options(doc),
    )


def parse_metadata(doc: dict[str, Any]) -> MetadataRequest:
    """`/metadata`: `ids` (integers) and `indice_name`."""
    ids = doc.get("ids")
    if not isinstance(ids, list):
        raise BadRequestError("ids must be a list of integers")
    if len(ids) > MAX_METADATA_IDS:
        raise BadRequestError(f"at most {MAX_METADATA_IDS} ids per request, not {len(ids)}")
    for i, x in enumerate(ids):
        if isinstance(x, bool) or not isinstance(x, int) or not -(2**63) <= x < 2**63:
            raise BadRequestError(f"ids[{i}] is {_show(x)}: expected an integer id")
    indice = doc.get("indice_name")
    if indice is not None and not isinstance(indice, str):
        raise BadRequestError(f"indice_name must be a string, not {_show(indice)}")
    return MetadataRequest(tuple(ids), indice)
