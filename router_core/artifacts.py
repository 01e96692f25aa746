"""The trained router on disk: safetensors weights beside a JSON manifest. No pickles.

``MODEL/prefill_trunk/weights.safetensors`` holds the preprocessor arrays (``pre.mean``,
``pre.scale``, optionally ``pre.components``) and each ensemble member's parameters
(``member0.net.0.weight`` ...). ``manifest.json`` holds what is needed to use them safely:
targets, prices, encoder identity, feature columns, widths, metrics, the weights' SHA-256.
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


def save_trunk(storage: Storage, folder: str, pre: Preprocessor, nets: list[SharedTrunkNet],
               manifest: dict) -> dict:
    tensors = {f"pre.{k}": np.ascontiguousarray(v, dtype=np.float64) for k, v in pre.state().items()}
    for i, net in enumerate(nets):
        for k, v in net.state_dict().items():
            tensors[f"member{i}.{k}"] = v.detach().cpu().numpy()
    data = st_save(tensors)
    manifest = dict(manifest, members=len(nets), weights_sha256=hashlib.sha256(data).hexdigest())
    storage.write_bytes(join(folder, WEIGHTS), data)
    storage.write_text(join(folder, MANIFEST), json.dumps(manifest, indent=2))
    return manifest


def load_trunk(storage: Storage, folder: str) -> tuple[Preprocessor, list[SharedTrunkNet], dict]:
    try:
        manifest = json.loads(storage.read_text(join(folder, MANIFEST)))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{join(folder, MANIFEST)}: not valid JSON ({e})") from None
    data = storage.read_bytes(join(folder, WEIGHTS))
    digest = hashlib.sha256(data).hexdigest()
    if digest != manifest.get("weights_sha256"):
        raise ArtifactError(f"{join(folder, WEIGHTS)}: SHA-256 {digest[:12]}... does not match the manifest's "
                            f"{str(manifest.get('weights_sha256'))[:12]}...; refusing to load")
    tensors = st_load(data)
    pre = Preprocessor.from_state({k[4:]: v for k, v in tensors.items() if k.startswith("pre.")})
    nets = []
    for i in range(manifest["members"]):
        net = SharedTrunkNet(pre.out_dim, len(manifest["targets"]), tuple(manifest["widths"]),
                             tuple(manifest["dropouts"]))
        net.load_state_dict(member_state(tensors, f"member{i}."))
        net.eval()
        nets.append(net)
    return pre, nets, manifest


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
