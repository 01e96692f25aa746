import pytest

from router_core.config import load_config
from router_core.errors import ConfigError


def test_defaults_file_and_overrides_in_order(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("storage:\n  region: eu-west-1\n  endpoint_url: http://127.0.0.1:9\nimport:\n  seed: 3\n")
    cfg = load_config(p, ["storage.region=us-east-2", "import.test_frac=0.25"])
    assert cfg.storage.region == "us-east-2"  # --set beats the file
    assert cfg.storage.endpoint_url == "http://127.0.0.1:9"  # the file beats the default
    assert cfg.import_.seed == 3 and cfg.import_.test_frac == 0.25
    assert load_config().storage.region == "us-east-1"


def test_unknown_key_is_an_error_naming_file_and_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("storage:\n  regoin: eu-west-1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: storage.regoin: unknown key"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"--set ray.cpus: ray.cpus: unknown key"):
        load_config(None, ["ray.cpus=2"])


def test_bad_values_and_files(tmp_path):
    with pytest.raises(ConfigError, match="import.test_frac"):
        load_config(None, ["import.test_frac=1.5"])
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["storage.region"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.glob("*.yaml"))
    assert files, "configs/ should hold at least one config"
    for f in files:
        load_config(f)
