"""The Kubernetes manifests in config/k8s/, checked without a cluster: parsed and held against the program itself
(its flags, exit codes, ports and image user), and validated against the Kubernetes API schemas (kubernetes-validate
ships them, no cluster or network). The image's own recipe: tests/test_dockerfile.py."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml
from deploy_files import K8S, command, read_dockerfile

from ingest.core import errors

# The oldest Kubernetes the manifests support (the Job's backoffLimitPerIndex and FailIndex: README says ≥ 1.29)
# and the newest whose schemas kubernetes-validate ships.
K8S_MIN_VERSION = "1.29"


# -- Kubernetes ------------------------------------------------------------------------------------------------
def load_docs() -> dict[tuple[str, str], dict[str, Any]]:
    """The manifests by (kind, name); a document without a name is keyed by its file's name."""
    docs: dict[tuple[str, str], dict[str, Any]] = {}
    for file, doc in manifest_docs():
        assert {"apiVersion", "kind"} <= set(doc), file
        docs[(doc["kind"], doc.get("metadata", {}).get("name", file))] = doc
    return docs


@pytest.fixture(scope="module")
def docs() -> dict[tuple[str, str], dict[str, Any]]:
    return load_docs()


def one(docs: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for (k, _), d in docs.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


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
    ctx = command(args[0]).make_context(args[0], args[1:])
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
    docs: dict[tuple[str, str], dict[str, Any]],
) -> None:
    uid = int([i.args for i in read_dockerfile()[-1] if i.keyword == "USER"][-1].split(":")[0])
    images = set()
    for kind in ("Job", "Deployment"):
        workload = one(docs, kind)
        images.add(only_container(workload)["image"])
        security = workload["spec"]["template"]["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == uid
        assert only_container(workload)["securityContext"]["allowPrivilegeEscalation"] is False
    assert len(images) == 1


# -- kubernetes-validate ------------------------------------------------------------------------


def manifest_docs() -> list[tuple[str, dict[str, Any]]]:
    """(file name, document) of every YAML document under config/k8s/, in file order."""
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
