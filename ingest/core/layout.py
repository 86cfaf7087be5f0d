"""Where the three files of shard N live under a source root: LAION-400M, LAION-5B, or a template.

A layout is pure naming: `relpaths(shard)` gives the three relative paths, `shard_of(name)` reads a shard number
back from an img_emb file name (for listing a source), `listing_dir` is the directory to list.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from ingest.core.errors import UsageError

LAYOUTS: dict[str, tuple[str, str, str]] = {
    "laion400m": (
        "img_emb/img_emb_{shard}.npy",
        "text_emb/text_emb_{shard}.npy",
        "metadata/metadata_{shard}.parquet",
    ),
    "laion5b": (
        "img_emb/img_emb_{shard:04d}.npy",
        "text_emb/text_emb_{shard:04d}.npy",
        "laion2B-en-metadata/metadata_{shard:04d}.parquet",
    ),
}
"""Named layouts. clip-retrieval's inference output uses the laion400m names (any dimension)."""


def _check_template(template: str) -> re.Pattern[str]:
    """One `{shard}` / `{shard:FMT}` field and nothing else; returns a regex matching the file name part."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        template.format(shard=7)
    except (ValueError, KeyError, IndexError) as exc:
        raise UsageError(f"--layout: bad template {template!r} ({exc})") from None
    if fields != ["shard"]:
        raise UsageError(f"--layout: template {template!r} must contain exactly one {{shard}} field")
    if template.startswith("/") or ".." in template.split("/"):
        raise UsageError(f"--layout: template {template!r} must be a relative path inside the source root")
    name = template.rsplit("/", 1)[-1]
    pattern = ""
    for literal, field, _spec, _conv in string.Formatter().parse(name):
        pattern += re.escape(literal)
        if field is not None:
            pattern += r"(\d+)"
    return re.compile(f"^{pattern}$")


@dataclass(frozen=True, slots=True)
class Layout:
    img: str
    text: str
    meta: str
    name: str = "template"

    def relpaths(self, shard: int) -> tuple[str, str, str]:
        """img_emb, text_emb and metadata paths of `shard`, relative to the root ('/'-separated)."""
        return (self.img.format(shard=shard), self.text.format(shard=shard), self.meta.format(shard=shard))

    @property
    def listing_dir(self) -> str:
        """The directory holding the img_emb files ('' for the root itself)."""
        return self.img.rsplit("/", 1)[0] if "/" in self.img else ""

    def shard_of(self, name: str) -> int | None:
        """The shard number an img_emb file name stands for, or None if it is not one of ours."""
        m = _check_template(self.img).match(name)
        if m is None:
            return None
        shard = int(m.group(1))
        return shard if self.relpaths(shard)[0].rsplit("/", 1)[-1] == name else None

    def shards_in(self, names: list[str]) -> list[int]:
        found = {self.shard_of(n.rstrip("/").rsplit("/", 1)[-1]) for n in names}
        return sorted(s for s in found if s is not None)

    def display(self) -> str:
        return self.name if self.name != "template" else ",".join((self.img, self.text, self.meta))


def parse_layout(value: str) -> Layout:
    """`laion400m`, `laion5b`, or three comma-separated templates `IMG,TEXT,META` with `{shard[:fmt]}`."""
    if value in LAYOUTS:
        return Layout(*LAYOUTS[value], name=value)
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 3 or not all(parts):
        raise UsageError(
            f"--layout {value!r}: use laion400m, laion5b, or IMG,TEXT,META templates "
            "such as img_emb/img_emb_{shard:04d}.npy,text_emb/text_emb_{shard:04d}.npy,"
            "meta/metadata_{shard:04d}.parquet"
        )
    for p in parts:
        _check_template(p)
    return Layout(parts[0], parts[1], parts[2])


LAION400M = parse_layout("laion400m")
