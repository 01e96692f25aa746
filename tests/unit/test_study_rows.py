"""The study's variants and its resumable rows file (tests/bench/study_rows.py)."""

import json

import pyarrow as pa
import pytest

from router_core import schemas
from router_core.dataset import Dataset
from tests.bench import study_rows as S


def _ds():
    q = pa.table({"query_id": [f"q{i}" for i in range(8)], "text": ["t"] * 8,
                  "split": ["train"] * 5 + ["val", "test", "test"], "task": ["a", "a", "b", "b", "b", "a", "b", "a"]},
                 schema=schemas.QUERIES)
    rows = [(f"q{i}", m, float((i + (m == "y")) % 2)) for i in range(8) for m in ("x", "y")]
    o = pa.table({"query_id": [r[0] for r in rows], "model": [r[1] for r in rows], "score": [r[2] for r in rows],
                  "cost_usd": [None] * len(rows), "output_tokens": [None] * len(rows)}, schema=schemas.OUTCOMES)
    pool = schemas.Pool(models=[schemas.PoolModel(name=m, price_in_per_mtok=1, price_out_per_mtok=2) for m in "xy"])
    return Dataset(q, o, pool)


def test_graded_scores_are_smoothed_toward_the_training_mean_of_their_task():
    ds = _ds()
    g = S.graded(ds)
    got = {(r["query_id"], r["model"]): r["score"] for r in g.outcomes.to_pylist()}
    # Task a's training queries q0, q1: x scores 0, 1 (mean 0.5); task b's q2..q4: x 0, 1, 0 (mean 1/3).
    assert got[("q0", "x")] == pytest.approx(0.25 * 0.5)
    assert got[("q1", "x")] == pytest.approx(0.75 + 0.25 * 0.5)
    assert got[("q6", "x")] == pytest.approx(0.25 / 3)  # a test query of task b: train's mean, never its own
    assert all(0 <= s <= 1 for s in got.values()) and len(got) == ds.outcomes.num_rows
    assert g.queries.equals(ds.queries)


def test_the_small_variant_keeps_at_most_n_training_queries_and_every_other(monkeypatch):
    monkeypatch.setattr(S, "N_SMALL", 3)
    ds = _ds()
    s = S.small(ds)
    split = s.queries.column("split").to_pylist()
    assert split.count("train") == 3 and split.count("val") == 1 and split.count("test") == 2
    kept = set(s.queries.column("query_id").to_pylist())
    assert set(s.outcomes.column("query_id").to_pylist()) == kept and s.outcomes.num_rows == 2 * len(kept)
    assert S.small(ds).queries.equals(s.queries)  # seeded: the same cut every session


def test_rows_already_written_are_skipped_and_a_damaged_file_is_named(tmp_path):
    rows = tmp_path / "rows.jsonl"
    assert S.done_keys(rows) == set()
    rows.write_text(json.dumps({"pool": "rb", "variant": "base", "seed": 0}) + "\n\n")
    assert S.done_keys(rows) == {("rb", "base", 0)}
    rows.write_text(rows.read_text() + "{not json\n")
    with pytest.raises(SystemExit, match="rows.jsonl line 3: not JSON"):
        S.done_keys(rows)
