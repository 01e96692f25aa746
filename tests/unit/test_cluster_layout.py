"""One bucket layout (configs/cluster.yaml's header): every shipped config loads, and every cluster
manifest runs its stage with configs/cluster.yaml and paths in that layout, so that what retrain
promotes is what the nightly job, route, evaluate and onboard use."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.cli import build_parser
from router_core.config import load_config
from tests.unit.test_cluster_manifests import MANIFESTS, _cli_args, _commands, _docs, _local

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
BUCKET = "s3://prefill-router/"


def _under(path: str, prefix: str) -> bool:
    return path.rstrip("/") == prefix.rstrip("/") or path.startswith(prefix.rstrip("/") + "/")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    load_config(str(path), [])


def test_the_cluster_config_closes_the_loop_in_one_layout():
    cfg = load_config(str(REPO / "configs/cluster.yaml"), [])
    rc, nc = cfg.retrain, cfg.nightly
    assert nc.model == rc.models == BUCKET + "models"  # nightly serves the champion retrain promotes
    assert _under(rc.data, BUCKET + "datasets") and _under(rc.features, BUCKET + "features")
    assert _under(rc.new, BUCKET + "labels") and _under(nc.input, BUCKET + "incoming")
    assert _under(nc.output, BUCKET + "routes/nightly") and nc.watermark is None  # beside its routes
    assert nc.policy.name == "threshold" and nc.policy.tau is None  # the champion's own operating point


def _stage_commands() -> list[tuple[str, list[str]]]:
    """(manifest, the stage's arguments) of every prefill-router command in cluster/ (submit unwrapped)."""
    parser, out = build_parser(), []
    for path in MANIFESTS:
        for d in _docs(path):
            for cmd in _commands(d):
                args = _cli_args(cmd)
                if args is None:
                    continue
                if args[0] == "submit":
                    ns = parser.parse_args(args)
                    args = [ns.stage, *(ns.stage_args[1:] if ns.stage_args[:1] == ["--"] else ns.stage_args)]
                out.append((path.name, args))
    return out


def test_every_manifest_runs_its_stage_with_the_cluster_config_on_the_layouts_paths():
    cfg = load_config(str(REPO / "configs/cluster.yaml"), [])
    rc, nc = cfg.retrain, cfg.nightly
    parser = build_parser()
    cmds = _stage_commands()
    stages = {args[0] for _, args in cmds}
    assert {"extract", "select-layers", "train", "evaluate", "route", "onboard", "nightly", "retrain"} <= stages
    # Where each stage's paths belong: the same dataset and feature cache, the champion's folder.
    outs = {"extract": rc.features, "train": BUCKET + "experiments", "onboard": BUCKET + "experiments",
            "evaluate": BUCKET + "reports", "select-layers": BUCKET + "layers", "route": BUCKET + "routes/adhoc"}
    for name, args in cmds:
        ns = parser.parse_args(args)
        where = f"{name}: {' '.join(args)}"
        assert _local(ns.config) == REPO / "configs/cluster.yaml", where
        if getattr(ns, "data", None):
            assert ns.data == rc.data, where
        if getattr(ns, "features", None):
            assert ns.features == rc.features, where
        if getattr(ns, "model", None):
            assert ns.model == rc.models, where  # a retrain folder: route, evaluate and onboard resolve its champion
        if getattr(ns, "queries", None):
            assert _under(ns.queries, nc.input), where
        if getattr(ns, "new", None):
            assert _under(ns.new, rc.new), where
        if getattr(ns, "out", None):
            assert _under(ns.out, outs[args[0]]), where
            assert not _under(ns.out, rc.models) and not _under(ns.out, nc.output), where  # the loop's own folders


def test_the_iam_policy_grants_the_layouts_bucket_what_the_stages_do_and_no_more():
    import json

    policy = json.loads((REPO / "cluster/iam-policy.json").read_text())
    bucket = BUCKET.removeprefix("s3://").rstrip("/")
    granted = {(a, r) for st in policy["Statement"] if st["Effect"] == "Allow"
               for a in st["Action"] for r in [st["Resource"]]}
    assert {("s3:ListBucket", f"arn:aws:s3:::{bucket}"), ("s3:GetObject", f"arn:aws:s3:::{bucket}/*"),
            ("s3:PutObject", f"arn:aws:s3:::{bucket}/*"), ("s3:DeleteObject", f"arn:aws:s3:::{bucket}/*")} <= granted
    assert all(not a.endswith("*") and r.startswith(f"arn:aws:s3:::{bucket}") for a, r in granted)


def test_the_kustomization_sets_the_image_and_the_config_once_and_renders_valid_objects(tmp_path):
    """`kubectl kustomize` of the checkout's kustomization.yaml, with the image moved to another
    registry: every object passes the strict check, every pod runs the new image at the version's
    tag, and the head mounts the ConfigMap of configs/cluster.yaml where every job reads --config."""
    import shutil
    import subprocess

    import yaml

    from tests.unit.test_cluster_manifests import CONFIG_MOUNT, _project_version, _walk, validation_errors

    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with kustomize) is not installed")
    root = tmp_path / "checkout"
    for sub in ("cluster", "configs"):
        shutil.copytree(REPO / sub, root / sub)
    text = (REPO / "kustomization.yaml").read_text()
    assert "newName: ghcr.io/prefill-router/prefill-router " in text
    (root / "kustomization.yaml").write_text(text.replace("newName: ghcr.io/prefill-router/prefill-router ",
                                                          "newName: registry.example.com/team/prefill-router "))
    out = subprocess.run(["kubectl", "kustomize", str(root)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert {d["kind"] for d in docs} == {"ServiceAccount", "ConfigMap", "RayCluster", "RayCronJob"}
    for d in docs:
        assert validation_errors(d) == [], d["kind"]
    version = _project_version()
    assert {i for d in docs for i in _walk(d, "image")} == {
        f"registry.example.com/team/prefill-router:{version}", f"registry.example.com/team/prefill-router:{version}-gpu"}
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert cm["data"] == {"cluster.yaml": (REPO / "configs/cluster.yaml").read_text()}
    (rc,) = [d for d in docs if d["kind"] == "RayCluster"]
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]
    vol = next(v for v in head["volumes"] if v.get("configMap", {}).get("name") == cm["metadata"]["name"])
    mount = next(m for m in head["containers"][0]["volumeMounts"] if m["name"] == vol["name"])
    assert mount["mountPath"].rstrip("/") + "/" == CONFIG_MOUNT
    for d in docs:
        for e in _walk(d, "entrypoint"):
            assert f"--config {CONFIG_MOUNT}cluster.yaml" in e
