"""The core stays pure: no Ray, no environment reads, no work at import."""

import re
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "router_core"


def test_importing_router_core_does_not_import_ray_or_torch():
    code = ("import sys, router_core, router_core.config, router_core.storage, router_core.importers, "
            "router_core.validation; print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_core_never_reads_the_environment_or_imports_ray():
    for f in CORE.rglob("*.py"):
        src = f.read_text()
        assert not re.search(r"^\s*(import ray|from ray)", src, re.M), f
        assert "os.environ" not in src and "getenv" not in src, f
