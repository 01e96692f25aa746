"""Typed, strict configuration: defaults < YAML file < ``--set a.b=c`` overrides.

Building a config has no side effects. Secrets never live here: S3 credentials come from the
environment or the cloud's identity; endpoint and region are fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .dataset import format_validation_error
from .errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class StorageConfig(Strict):
    endpoint_url: str | None = Field(None, description="S3 endpoint, e.g. http://127.0.0.1:5000")
    region: str = "us-east-1"


class RayConfig(Strict):
    address: str | None = Field(None, description="Ray cluster address; None starts a local Ray")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (ignored on a cluster)")


class ImportConfig(Strict):
    seed: int = 0
    val_frac: float = Field(0.1, ge=0, lt=1)
    test_frac: float = Field(0.2, ge=0, lt=1)


class AppConfig(Strict):
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()
    import_: ImportConfig = Field(ImportConfig(), alias="import")


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. storage.region=eu-west-1")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> AppConfig:
    """Load ``path`` (YAML) over the defaults, then apply ``key=value`` overrides."""
    tree: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        tree = loaded or {}
    for item in overrides or []:
        key, value = parse_override(item)
        _set_path(tree, key, value)
        source += f" + --set {key}"
    try:
        return AppConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(f"{source}: {format_validation_error(e)}") from None
