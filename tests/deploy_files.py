"""What the packaging tests read: the repository's deploy files, a tiny Dockerfile reader, and the program's own
flags to hold them against."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer.main

from ingest.cli.app import app, register_later_commands

register_later_commands()  # the app registers index/search/daemon/... only when argv may name one

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "config" / "k8s"
BUILD_LOCAL = ROOT / "deploy" / "container" / "build-local.sh"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (after any --flags), else None (shell form)."""
        text = re.sub(r"^(--\S+\s+)*", "", self.args)
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order: comments dropped, backslash continuations joined (comment lines inside skipped)."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """Split at FROM; each stage starts with its FROM."""
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def read_dockerfile() -> list[list[Instruction]]:
    """The repository's Dockerfile, its stages in order."""
    return stages(parse_dockerfile((ROOT / "Dockerfile").read_text()))


def command(name: str) -> Any:
    """The click command `laion-ingest NAME` parses its arguments with."""
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


def param(name: str, flag: str) -> Any:
    """A command's parameter (by its Python name): its default, type and bounds."""
    return next(p for p in command(name).params if p.name == flag)
