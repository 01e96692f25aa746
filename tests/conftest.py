"""Fixtures for every tier: where the real data lives, small datasets built in memory."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from router_core import schemas
from router_core.dataset import Dataset

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"  # beside the checkout, as laid out for sessions and CI
SHARED_DATA = Path(os.environ.get("PREFILL_ROUTER_DATA", SHARED / "data"))


def shared_file(rel: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    p = SHARED_DATA / rel
    if not p.exists():
        pytest.skip(f"real data not available: {p} is absent (set PREFILL_ROUTER_DATA)")
    return p


def make_dataset(queries: list[dict], outcomes: list[dict], pool: list[tuple] | None = None) -> Dataset:
    """A Dataset from plain rows; pool entries are (name, price_in, price_out)."""
    qs = pa.schema([f.with_nullable(True) for f in schemas.QUERIES])
    os_ = pa.schema([f.with_nullable(True) for f in schemas.OUTCOMES])
    q = pa.Table.from_pylist([{"split": None, "task": None, **r} for r in queries], schema=qs)
    o = pa.Table.from_pylist([{"cost_usd": None, "output_tokens": None, **r} for r in outcomes], schema=os_)
    pool = pool or [("a", 1.0, 2.0), ("b", 10.0, 30.0)]
    p = schemas.Pool(models=[schemas.PoolModel(name=n, price_in_per_mtok=i, price_out_per_mtok=o_)
                             for n, i, o_ in pool])
    return Dataset(q, o, p)


@pytest.fixture
def small_dataset() -> Dataset:
    queries = [
        {"query_id": f"q{i}", "text": f"question number {i}?", "split": "train" if i < 6 else "test",
         "task": "t1" if i % 2 else "t2"}
        for i in range(8)
    ]
    outcomes = []
    for i in range(8):
        outcomes.append({"query_id": f"q{i}", "model": "a", "score": float(i % 2), "cost_usd": 0.001})
        if i != 3:  # q3 was never measured on b: no row, never a 0
            outcomes.append({"query_id": f"q{i}", "model": "b", "score": 1.0, "cost_usd": 0.01,
                             "output_tokens": 12})
    return make_dataset(queries, outcomes)


@pytest.fixture(scope="session")
def encoder_cache() -> str:
    """Converted encoders persist in the repo's ignored .cache/ across runs (the GGUF converts once)."""
    d = REPO / ".cache" / "encoders-for-tests"
    d.mkdir(parents=True, exist_ok=True)
    return str(d)


@pytest.fixture(scope="session")
def real_queries() -> list[dict]:
    """Real short queries: 50 LLMRouter questions spread over its tasks (rows of the real file)."""
    import csv

    path = shared_file("llmrouter-9/scores_wide.csv")
    csv.field_size_limit(2**31 - 1)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    short = [r for r in rows if len(r["question"]) < 1200]
    picked = short[:: len(short) // 50][:50]
    return [{"query_id": f"lr-{i}", "text": r["question"], "split": r["split"], "task": r["task_name"]}
            for i, r in enumerate(picked)]
