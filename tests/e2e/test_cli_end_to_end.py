"""The command line as a user runs it, on real data with the real encoder (marked slow)."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, shared_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
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


def test_pipeline_end_to_end_on_a_real_llmrouter_slice(tmp_path, encoder_cache):
    """`pipeline` as a user runs it: import, validate, extract, select-layers, train, evaluate, route."""
    import csv

    csv.field_size_limit(2**31 - 1)
    src = shared_file("llmrouter-9/scores_wide.csv")
    with open(src, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    train = [r for r in rows if r["split"] == "train"][::40]
    test = [r for r in rows if r["split"] == "test"][::8]
    with open(tmp_path / "slice.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(train + test)
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(json.dumps({  # JSON is YAML
        "pipeline": {"out": str(tmp_path / "out"), "format": "llmrouter", "source": str(tmp_path / "slice.csv"),
                     "candidates": str(shared_file("llmrouter-9/llm_candidates.json"))},
        "extract": {"layers": [8, 16, 24], "pooling": ["mean", "tail"], "max_length": 256, "cache_dir": encoder_cache},
        "train": {"n_trials": 2, "seeds": 2, "keep": 1, "max_epochs": 20},
        "baselines": {"semantic_trials": 1}, "ray": {"num_cpus": 2}}))
    r = _run("pipeline", "--config", str(cfg))
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "out"
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["n_test"] == len(test) and "prefill_trunk" in report["routers"]
    run = json.loads((out / "routes" / "run.json").read_text())
    assert run["status"] == "complete" and run["routed"] + run["rejected"] == run["input_rows"] == len(test)
    assert f"report: {out}/report/report.html" in r.stdout and "== done in" in r.stdout
    # The last figure line: the measured test saving and change, beside what train promised with its interval.
    last = next(line for line in r.stdout.splitlines() if line.startswith(f"== {len(test)} test queries routed"))
    assert "measured on the test split" in last and "train promised" in last and "95% interval" in last, last
    # Every figure of the run in one file, the last line among them (the README quotes the demo's).
    summary = json.loads((out / "summary.json").read_text())
    assert summary["last_line"] == last and summary["served"] == report["serving"] and summary["queries"] == len(test)
    assert set(summary["seconds"]) == {"import", "validate", "extract", "select-layers", "train", "evaluate", "route",
                                       "total"}
    assert summary["test_p_auccc"] == report["routers"][report["serving"]]["p_auccc"] and summary["dtype"]
