"""The command line as a user runs it, on real data with the real encoder (marked slow)."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, shared_file

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "jobs.cli"]


def _run(*args, env=None):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=1800)


def test_import_validate_extract_on_real_routerbench(tmp_path, encoder_cache):
    src = shared_file("routerbench-subset/routerbench_wide.csv")
    data = tmp_path / "rb"
    r = _run("import", "routerbench", str(src), "--out", str(data))
    assert r.returncode == 0, r.stderr
    assert "3178 source rows -> 3178 queries + 0 rejected" in r.stdout
    # Extract a 300-query slice (both preambles and MBPP) to keep the slow tier in minutes.
    q = pq.read_table(data / "queries.parquet")
    pq.write_table(q.take(list(range(0, q.num_rows, q.num_rows // 300))[:300]), tmp_path / "slice.parquet")
    env = dict(os.environ, PREFILL_ROUTER_CACHE=encoder_cache)
    r = _run("extract", "--data", str(tmp_path / "slice.parquet"), "--out", str(tmp_path / "f"),
             "--set", "ray.num_cpus=2", env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "300 input = 0 reused + 300 extracted + 0 rejected" in r.stdout
    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert manifest["rows"] == 300 and len(manifest["columns"]) == 62
    r = _run("extract", "--data", str(tmp_path / "slice.parquet"), "--out", str(tmp_path / "f"),
             "--set", "ray.num_cpus=2", env=env)
    assert "300 input = 300 reused + 0 extracted + 0 rejected" in r.stdout
