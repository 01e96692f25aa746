"""The trained router on disk: safetensors weights beside a JSON manifest. No pickles.

Every router is a folder ``MODEL/<name>/`` with ``weights.safetensors`` (arrays only; e.g. the
preprocessor's ``pre.mean``, ``pre.scale``, ``pre.components`` and each ensemble member's
``member0.net.0.weight`` ...) and ``manifest.json``: what is needed to use them safely (targets,
prices, encoder identity, feature columns, widths, metrics) and the weights' SHA-256, checked on
every load.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from .errors import ArtifactError
from .model import Preprocessor, SharedTrunkNet
from .storage import Storage, join

WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"


def member_state(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, torch.Tensor]:
    """The state dict stored under ``prefix`` (e.g. ``member0.``) in a flat tensor mapping."""
    return {k[len(prefix):]: torch.from_numpy(v) for k, v in tensors.items() if k.startswith(prefix)}


def save_component(storage: Storage, folder: str, tensors: dict[str, np.ndarray], manifest: dict) -> dict:
    """Write ``weights.safetensors`` and ``manifest.json`` (with the weights' SHA-256) to ``folder``."""
    data = st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()})
    manifest = dict(manifest, weights_sha256=hashlib.sha256(data).hexdigest())
    storage.write_bytes(join(folder, WEIGHTS), data)
    storage.write_text(join(folder, MANIFEST), json.dumps(manifest, indent=2))
    return manifest


def read_json(storage: Storage, uri: str) -> dict:
    if not storage.exists(uri):
        raise ArtifactError(f"{uri}: missing")
    try:
        return json.loads(storage.read_text(uri))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{uri}: not valid JSON ({e})") from None


def load_component(storage: Storage, folder: str) -> tuple[dict[str, np.ndarray], dict]:
    """The tensors and manifest of ``folder``; refuses weights whose digest differs from the manifest's."""
    manifest = read_json(storage, join(folder, MANIFEST))
    data = storage.read_bytes(join(folder, WEIGHTS))
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.get("weights_sha256"):
        raise ArtifactError(f"{join(folder, WEIGHTS)}: SHA-256 {digest[:12]}... does not match the manifest's "
                            f"{str(manifest.get('weights_sha256'))[:12]}...; refusing to load")
    return st_load(data), manifest


def trunk_tensors(pre: Preprocessor, nets: list[SharedTrunkNet], prefix: str = "") -> dict[str, np.ndarray]:
    tensors = {f"{prefix}pre.{k}": np.asarray(v, dtype=np.float64) for k, v in pre.state().items()}
    for i, net in enumerate(nets):
        for k, v in net.state_dict().items():
            tensors[f"{prefix}member{i}.{k}"] = v.detach().cpu().numpy()
    return tensors


def trunk_from_tensors(tensors: dict[str, np.ndarray], n_members: int, n_targets: int, widths, dropouts,
                       prefix: str = "") -> tuple[Preprocessor, list[SharedTrunkNet]]:
    p = f"{prefix}pre."
    pre = Preprocessor.from_state({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)})
    nets = []
    for i in range(n_members):
        net = SharedTrunkNet(pre.out_dim, n_targets, tuple(widths), tuple(dropouts))
        net.load_state_dict(member_state(tensors, f"{prefix}member{i}."))
        nets.append(net.eval())
    return pre, nets


def check_features_match(manifest: dict, features_manifest: dict) -> None:
    """Refuse features from another encoder or settings than the model was trained on."""
    want, got = manifest.get("features_settings_key"), features_manifest.get("settings_key")
    if want != got:
        raise ArtifactError(
            f"features were made with other settings than the model's (encoder "
            f"{features_manifest.get('encoder', {}).get('identity', '?')[:60]} vs "
            f"{manifest.get('encoder', {}).get('identity', '?')[:60]}; key {got} vs {want})")
    missing = [c for c in manifest["columns"] if c not in features_manifest.get("columns", [])]
    if missing:
        raise ArtifactError(f"features lack the model's column(s) {', '.join(missing)}")
