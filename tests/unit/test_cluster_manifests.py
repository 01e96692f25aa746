"""Every manifest under cluster/ parses, and every command in it is a real subcommand whose
arguments the CLI accepts and whose --config loads."""

import shlex
from pathlib import Path

import pytest
import yaml

from jobs.cli import build_parser
from router_core.config import load_config

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((REPO / "cluster").glob("*.yaml"))


def _commands(doc) -> list[list[str]]:
    """Command lines that run the CLI: RayJob entrypoints, container commands, launcher hints."""
    found = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == "entrypoint" and isinstance(v, str):
                found.append(shlex.split(v))
            elif k == "command" and isinstance(v, list):
                found.append([str(x) for x in v])
            else:
                found += _commands(v)
    elif isinstance(doc, list):
        for v in doc:
            found += _commands(v)
    return found


def _cli_args(cmd: list[str]) -> list[str] | None:
    if cmd[:3] == ["python", "-m", "jobs.cli"]:
        return cmd[3:]
    if cmd[:1] == ["prefill-router"]:
        return cmd[1:]
    return None


def test_there_are_manifests_for_the_cluster_the_stages_and_the_schedule():
    names = {p.name for p in MANIFESTS}
    assert {"raycluster.yaml", "cronjob-nightly.yaml", "launcher-aws.yaml"} <= names
    assert {f"rayjob-{s}.yaml" for s in ("extract", "train", "evaluate", "route", "nightly")} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_parses_and_its_commands_are_real(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, path
    kinds = {d.get("kind") for d in docs}
    cmds = [c for d in docs for c in _commands(d) if _cli_args(c) is not None]
    if path.name.startswith(("rayjob-", "cronjob-")):
        assert cmds, f"{path.name}: no prefill-router command"
    if path.name == "raycluster.yaml":
        assert kinds == {"RayCluster"}
        spec = docs[0]["spec"]
        gpu = spec["workerGroupSpecs"][0]
        assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1 and spec["enableInTreeAutoscaling"]
        env = {e["name"] for e in spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
        assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= env
    parser = build_parser()
    for cmd in cmds:
        args = _cli_args(cmd)
        if args[0] == "submit":  # the submitted stage's own arguments follow --
            ns = parser.parse_args(args)
            inner = ns.stage_args[1:] if ns.stage_args[:1] == ["--"] else ns.stage_args
            args = [ns.stage, *inner]
        ns = parser.parse_args(args)  # exits (SystemExit) on an unknown subcommand or flag
        if getattr(ns, "config", None):
            load_config(str(REPO / ns.config), [])


def test_every_config_loads():
    for p in sorted((REPO / "configs").glob("*.yaml")):
        load_config(str(p), [])
