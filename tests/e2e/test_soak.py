"""Soak tests (marked slow): the route job over 1,000,000 queries with precomputed features, and
extraction over a large corpus with a token cap. They print their figures (peak RSS, rate) and
check that memory stays bounded and every row is accounted for.

    .venv/bin/python -m pytest -m slow -s tests/e2e/test_soak.py
    PREFILL_ROUTER_SOAK_EXTRACT=200000 ...   # corpus size of the extraction soak (default 200,000)
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_route_soak_one_million_queries(tmp_path, encoder_cache):
    sys.path.insert(0, str(REPO / "tests" / "bench"))
    from bench_route import build  # the benchmark's synthetic inputs: queries, features, a model

    from jobs.route import run_route
    from jobs.runtime import ensure_ray
    from router_core.config import Policy
    from router_core.config import load_config

    rows = 1_000_000
    build(tmp_path, rows, members=5, pca=128, student=128, cache_dir=encoder_cache)
    features_mib = sum(p.stat().st_size for p in (tmp_path / "features" / "parts").iterdir()) / 2**20
    cfg = load_config(None, ["ray.num_cpus=2", f"extract.cache_dir={encoder_cache}"])
    ensure_ray(cfg)
    before = _peak_rss_mib()
    t = time.perf_counter()
    run = run_route(cfg, str(tmp_path / "queries"), str(tmp_path / "model"), str(tmp_path / "routes"), Policy())
    seconds = time.perf_counter() - t
    peak = _peak_rss_mib()
    print(f"\nroute soak: {rows} queries in {seconds:.1f} s = {rows / seconds:,.0f} q/s; driver peak RSS "
          f"{peak:,.0f} MiB (before the job {before:,.0f} MiB); features on disk {features_mib:,.0f} MiB; "
          f"stages {json.dumps({k: round(v, 2) for k, v in run.seconds.items()})}")
    assert run.routed == rows and run.rejected == 0 and run.reconciles()
    routes = pq.ParquetDataset(str(tmp_path / "routes" / "routes")).read(columns=["query_id"])
    assert routes.num_rows == rows and pa.compute.count_distinct(routes.column("query_id")).as_py() == rows
    # Bounded: the driver never holds the features (they stay in the prediction tasks, a few
    # parts each), only ids, texts and n x K probabilities.
    assert peak < before + 0.75 * features_mib + 1024


def test_extraction_soak_large_corpus_with_a_token_cap(tmp_path, encoder_cache):
    n = int(os.environ.get("PREFILL_ROUTER_SOAK_EXTRACT", "200000"))
    words = ["route", "cheap", "model", "answer", "query", "prefill", "token", "layer", "cost", "budget"]
    texts = [f"q{i}: " + " ".join(words[(i * 7 + k) % 10] for k in range(3 + i % 9)) for i in range(n)]
    pq.write_table(pa.table({"query_id": [f"s{i:07d}" for i in range(n)], "text": texts}), tmp_path / "q.parquet")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "jobs.cli", "extract", "--data", str(tmp_path / "q.parquet"),
           "--out", str(tmp_path / "f"), "--set", f"extract.cache_dir={encoder_cache}", "--set", "ray.num_cpus=2",
           # the smaller setting: 8 tokens, bfloat16, layers 8 and 16 (the encoder runs 17 of its 30)
           "--set", "extract.max_length=8", "--set", "extract.dtype=bfloat16",
           "--set", "extract.layers=[8,16]", "--set", "extract.pooling=[mean]",
           "--set", "extract.rows_per_task=4096", "--set", "extract.chat_template=false"]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=7200)
    seconds = time.perf_counter() - t
    assert r.returncode == 0, r.stderr[-3000:]
    print(f"\nextraction soak: {n} queries in {seconds:.0f} s = {n / seconds:,.0f} queries/s\n{r.stdout}")
    assert f"{n} input = 0 reused + {n} extracted + 0 rejected" in r.stdout
    manifest = json.loads((tmp_path / "f" / "manifest.json").read_text())
    assert manifest["rows"] == n and sum(p["rows"] for p in manifest["parts"].values()) == n
