"""The few-labels study's datasets and its order (tests/bench/onboard_study.py)."""

import json

import pytest

from tests.bench import onboard_study as O
from tests.conftest import make_dataset


def _ds():
    queries = [{"query_id": f"q{i}", "text": "x" * (10 + i), "split": "train" if i < 12 else "test",
                "task": "a" if i % 2 else "b"} for i in range(16)]
    # c is cheap and weak, e dear and strong, m in between.
    outcomes = [{"query_id": f"q{i}", "model": m, "score": float(s), "cost_usd": cost}
                for i in range(16) for m, s, cost in (("c", i % 3 == 0, 0.001), ("m", i % 2, 0.01), ("e", i % 5 != 0, 0.1))]
    return make_dataset(queries, outcomes, [("c", 1, 1), ("m", 5, 5), ("e", 50, 50)])


def test_the_roles_are_the_cheapest_the_best_and_the_median_of_the_rest():
    assert O.pick_targets(_ds()) == {"cheapest": "c", "middle": "m", "best": "e"}


def test_a_cut_keeps_n_of_the_targets_training_outcomes_and_everything_else():
    ds = _ds()
    cut = O.cut(ds, "m", 5)
    rows = cut.outcomes.to_pylist()
    train = {f"q{i}" for i in range(12)}
    kept = [r for r in rows if r["model"] == "m" and r["query_id"] in train]
    assert len(kept) == 5
    assert [r for r in rows if r["model"] == "m" and r["query_id"] not in train] == \
        [r for r in ds.outcomes.to_pylist() if r["model"] == "m" and r["query_id"] not in train]  # test kept whole
    assert len([r for r in rows if r["model"] != "m"]) == 32 and cut.queries.equals(ds.queries)
    assert O.cut(ds, "m", 5).outcomes.equals(cut.outcomes)  # the same rows for the same seed
    assert len([r for r in O.cut(ds, "m", 100).outcomes.to_pylist() if r["model"] == "m"]) == 16


def test_without_a_target_its_outcomes_and_its_price_are_gone():
    out = O.cut(_ds(), "e", None)
    assert "e" not in out.pool.names and set(out.outcomes.column("model").to_pylist()) == {"c", "m"}


def test_the_plan_runs_the_bounds_and_the_unmasked_fits_first_then_n200():
    jobs = O.plan(["rb", "lr"], [50, 200, 400])
    kinds = [j[2] for j in jobs]
    assert kinds[:12] == ["all"] * 6 + ["without"] * 6
    assert [j[3] for j in jobs[12:18]] == [200] * 6 and [j[3] for j in jobs[18:]] == [50] * 6 + [400] * 6
    assert len(set(jobs)) == len(jobs) == 12 + 18


def test_rows_already_written_are_skipped_and_a_bad_line_is_named(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text(json.dumps({"pool": "rb", "role": "best", "method": "masked", "n": 200}) + "\n\n")
    assert O.done_keys(f) == {("rb", "best", "masked", 200)}
    f.write_text("{not json\n")
    with pytest.raises(SystemExit, match="line 1"):
        O.done_keys(f)
