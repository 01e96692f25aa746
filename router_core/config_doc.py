"""docs/config.md, generated from the config's pydantic models: every section and field with its type,
default and description, so the reference cannot drift from the code (a test compares them).

    python -m router_core.config_doc > docs/config.md
"""

from __future__ import annotations

import json
import sys
import typing

from pydantic import BaseModel

from .config import AppConfig

HEAD = """# Configuration reference

Generated from `router_core/config.py` by `python -m router_core.config_doc > docs/config.md`
(tests/unit/test_config_doc.py fails when this file is stale). A config is YAML with these
sections; every key is optional, and an unknown key is an error that names it. Any field can be
set on the command line with `--set section.field=value` (YAML syntax: `--set train.seeds=3`,
`--set extract.layers=[0,8,16]`, `--set nightly.model=null`). The shipped configs:
`configs/default.yaml`, `configs/demo.yaml` (`make demo`) and `configs/cluster.yaml` (a GPU Ray
cluster, and the bucket layout of the operating loop).
"""


def _type(annotation) -> str:
    text = getattr(annotation, "__name__", None) if typing.get_origin(annotation) is None else None
    text = text or str(annotation).replace("typing.", "")
    return text.replace("NoneType", "null")


def _default(value) -> str:
    if isinstance(value, BaseModel):
        return "(see below)"
    return json.dumps(value) if value is not None else "null"


def _section(name: str, model: type[BaseModel], out: list[str]) -> None:
    doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    out += ["", f"## `{name}`", ""] + ([doc, ""] if doc and not doc.startswith("!!!") else [])
    out += ["| field | type | default | what it does |", "|---|---|---|---|"]
    nested = []
    for field, info in model.model_fields.items():
        key = info.alias or field
        desc = (info.description or "").replace("|", "\\|").replace("\n", " ")
        typ, default = (x.replace("|", "\\|") for x in (_type(info.annotation), _default(info.default)))
        out.append(f"| `{key}` | `{typ}` | `{default}` | {desc} |")
        if isinstance(info.default, BaseModel):
            nested.append((f"{name}.{key}", type(info.default)))
    for sub, m in nested:
        _section(sub, m, out)


def reference() -> str:
    """The whole of docs/config.md."""
    out = [HEAD.rstrip("\n")]
    for field, info in AppConfig.model_fields.items():
        _section(info.alias or field, type(info.default), out)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(reference())
