"""The model index: what ``train`` writes as MODEL/manifest.json and every later stage reads.

One typed reader for the model folder (routers and their folders, the serving router, the feature
caches it was trained on, cost estimates) and for a retrain folder's ``champion.json`` (which
model folder serves). Stages never pick keys out of these files by hand.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, ValidationError

from .dataset import format_validation_error
from .errors import ArtifactError
from .storage import Storage, join

INDEX = "manifest.json"
CHAMPION = "champion.json"
KIND = "prefill-router-models"


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FeatureRef(_Doc):
    """A feature cache a router reads: where, with which settings, from which encoder."""

    uri: str
    settings_key: str
    encoder: dict
    column: str | None = None  # the one column of a sentence-embedding cache


class ModelIndex(_Doc):
    kind: str = KIND
    targets: list[str]
    pool: dict
    data_fingerprint: str
    n_train: int
    n_val: int
    code_version: str
    default: str  # the router evaluate and retrain compare
    serve: str  # the router route uses unless told
    routers: dict[str, str]  # name -> folder under the model folder
    best_single: str  # on train: the target the savings are measured against
    output_tokens_median: dict[str, float]  # per target, on train: the output length of a call
    output_lengths: dict = {}  # router_core.lengths.OutputLengths: route's estimate of each call's output tokens
    features: dict[str, FeatureRef]  # "prefill", "semantic"
    layer_profile: str | None = None
    held_out: str | None = None  # router_core.held_out: the candidates' probabilities on the rows chosen on
    selection: dict = {}  # every candidate's cross-validated P-AUCCC (val_p_auccc; on the rows named in rows), and the choice
    operating_point: dict = {}  # route's default policy: {"policy": "threshold", "tau", validation figures}
    seconds: dict[str, float] = {}
    config: dict = {}
    onboard: dict = {}  # targets added by ``onboard``: from which model, on which labels, with which head

    def folder(self, model: str, name: str) -> str:
        """The folder of router ``name`` under the model folder ``model``."""
        if name not in self.routers:
            raise ArtifactError(f"{model}: no router {name!r} (it has {', '.join(self.routers)})")
        return join(model, self.routers[name])

    def save(self, storage: Storage, model: str) -> None:
        storage.write_text(join(model, INDEX), json.dumps(self.model_dump(exclude_none=True), indent=2))


class Champion(_Doc):
    """A retrain folder's pointer to the model that serves (``retrain.models/champion.json``)."""

    version: str
    model: str
    dataset: str
    features: str
    p_auccc: float
    promoted_unix: int

    def save(self, storage: Storage, models: str) -> None:
        storage.write_text(join(models, CHAMPION), json.dumps(self.model_dump(), indent=2))


def _read(storage: Storage, uri: str, cls, what: str):
    try:
        doc = json.loads(storage.read_text(uri))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{uri}: not valid JSON ({e})") from None
    try:
        return cls.model_validate(doc)
    except ValidationError as e:
        raise ArtifactError(f"{uri}: not {what} ({format_validation_error(e)})") from None


def versions(storage: Storage, models: str) -> list[str]:
    """The version folders (v0001, v0002, ...) of the retrain folder ``models``, in order."""
    names = {f[len(models.rstrip("/")) + 1:].split("/", 1)[0] for f in storage.list_files(models)}
    return sorted(n for n in names if n.startswith("v") and n[1:].isdigit())


def read_champion(storage: Storage, models: str) -> Champion | None:
    uri = join(models, CHAMPION)
    return _read(storage, uri, Champion, "a champion pointer") if storage.exists(uri) else None


def resolve_model(storage: Storage, uri: str) -> str:
    """The model folder ``uri`` names: itself, or the champion of a retrain folder."""
    champion = read_champion(storage, uri)
    return champion.model if champion is not None else uri


def read_index(storage: Storage, model: str) -> ModelIndex:
    uri = join(model, INDEX)
    if not storage.exists(uri):
        raise ArtifactError(f"{model}: no {INDEX} (not a model folder made by `train`)")
    try:
        kind = json.loads(storage.read_text(uri)).get("kind")
    except (json.JSONDecodeError, AttributeError):
        kind = None
    if kind != KIND:
        raise ArtifactError(f"{uri}: kind is {kind!r}, expected {KIND!r} (the output folder of `train`)")
    return _read(storage, uri, ModelIndex, "a model index")
