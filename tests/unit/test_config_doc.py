"""docs/config.md is generated from the config models and kept current."""

from pathlib import Path

from router_core.config import AppConfig
from router_core.config_doc import reference

REPO = Path(__file__).resolve().parents[2]


def test_the_config_reference_is_current_and_names_every_field():
    text = reference()
    assert (REPO / "docs/config.md").read_text() == text, (
        "docs/config.md is stale: python -m router_core.config_doc > docs/config.md")
    for section, info in AppConfig.model_fields.items():
        assert f"## `{info.alias or section}`" in text
        for field, f in type(info.default).model_fields.items():
            assert f"| `{f.alias or field}` |" in text
    assert "| `promise_batch` | `int \\| None` | `1000` |" in text
