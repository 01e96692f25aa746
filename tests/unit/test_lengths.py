"""router_core.lengths: each call's output tokens, derived from its cost where unknown, and the
per-task estimate that prices route's calls."""

import json

import numpy as np
import pytest

from router_core.errors import ArtifactError
from router_core.evaluation import estimate_check
from router_core.lengths import (OutputLengths, derive_output_tokens, fit_output_lengths, length_errors,
                                 priced_by)
from router_core.model_index import ModelIndex

P_IN, P_OUT = np.array([1.0, 10.0, 0.5]), np.array([2.0, 30.0, 0.0])  # dollars per million tokens


def _priced(rng, n=200):
    chars = rng.integers(40, 4000, n).astype(float)
    tokens = rng.integers(0, 900, (n, 3)).astype(float)
    cost = (chars / 4.0)[:, None] * P_IN / 1e6 + tokens * P_OUT / 1e6
    return chars, tokens, cost


def test_output_tokens_are_recovered_from_cost_where_both_are_known():
    chars, tokens, cost = _priced(np.random.default_rng(0))
    unknown = np.full_like(tokens, np.nan)
    got, counts = derive_output_tokens(unknown, cost, chars, P_IN, P_OUT)
    np.testing.assert_allclose(got[:, :2], tokens[:, :2], rtol=1e-9, atol=1e-6)
    assert np.isnan(got[:, 2]).all()  # a free output price says nothing of the length
    assert counts == {"known": 0, "derived": 400, "unknown": 200}


def test_known_tokens_are_kept_and_a_cost_below_the_input_estimate_is_zero_tokens():
    chars, tokens, cost = _priced(np.random.default_rng(1), 4)
    known = tokens.copy()
    known[0, 0] = np.nan
    cost[0, 0] = 0.5 * (chars[0] / 4.0) * P_IN[0] / 1e6  # cheaper than its own prompt: the input estimate is off
    cost[1, 1] = np.nan
    known[1, 1] = np.nan
    got, counts = derive_output_tokens(known, cost, chars, P_IN, P_OUT)
    assert got[0, 0] == 0.0 and np.isnan(got[1, 1])
    np.testing.assert_array_equal(got[2:], tokens[2:])
    assert counts == {"known": 10, "derived": 1, "unknown": 1}


def _by_task(rng, n=600):
    """Code answers are long, choices short; target 1 writes twice as much as target 0."""
    tasks = rng.choice(["code", "choice"], n, p=[0.2, 0.8]).tolist()  # code a minority, as in RouterBench
    base = np.where(np.array(tasks) == "code", 300.0, 3.0)
    tokens = np.stack([base, 2 * base], 1) * rng.lognormal(0, 0.3, (n, 2))
    return tasks, tokens


def test_a_length_that_depends_on_the_task_is_estimated_better_than_by_the_median():
    rng = np.random.default_rng(2)
    tasks, tokens = _by_task(rng)
    model = fit_output_lengths(tokens, tasks, ["a", "b"], {"known": tokens.size})
    assert model.kind == "task_mean" and set(model.per_task) == {"code", "choice"}
    test_tasks, test_tokens = _by_task(rng, 300)
    errors = length_errors(model, test_tokens, test_tasks)
    for target in ("a", "b"):
        assert errors[target]["male_model"] < 0.5 * errors[target]["male_median"], errors[target]
        assert errors[target]["calls"] == 300
    # A sum of calls is what a tally needs: the expected tokens add up to the observed total.
    expected = model.expected(tasks, len(tasks))
    np.testing.assert_allclose(expected.sum(axis=0), tokens.sum(axis=0), rtol=1e-9)
    assert model.median.sum() < 0.2 * tokens.mean(axis=0).sum()  # the median alone undercounts it


def test_a_task_with_few_calls_or_unknown_falls_back_to_the_targets_mean():
    tasks = ["big"] * 30 + ["rare"] * 3
    tokens = np.array([[10.0]] * 30 + [[1000.0]] * 3)
    model = fit_output_lengths(tokens, tasks, ["a"], min_calls=20)
    got = model.expected(["big", "rare", None, "never-seen"], 4)[:, 0]
    overall = tokens.mean()
    np.testing.assert_allclose(got, [10.0, overall, overall, overall])
    assert model.expected(None, 2)[:, 0].tolist() == [overall, overall]


def test_a_pool_without_lengths_estimates_zero_tokens_and_says_median():
    model = fit_output_lengths(np.full((5, 2), np.nan), ["t"] * 5, ["a", "b"], {"known": 0, "derived": 0, "unknown": 10})
    assert model.kind == "median"
    assert "none known" in model.describe()
    assert priced_by(model, ["t"], None) == "each target's median"
    assert not model.expected(["t"] * 3, 3).any()
    assert length_errors(model, np.full((3, 2), np.nan), ["t"] * 3) == {}


def test_the_model_round_trips_and_an_index_without_one_uses_its_medians():
    tasks, tokens = _by_task(np.random.default_rng(3))
    model = fit_output_lengths(tokens, tasks, ["a", "b"], {"known": 0, "derived": tokens.size, "unknown": 0})
    back = OutputLengths.from_dict(model.to_dict())
    np.testing.assert_array_equal(back.expected(tasks, len(tasks)), model.expected(tasks, len(tasks)))
    assert back.describe() == model.describe() and "derived from cost_usd" in back.describe()
    index = ModelIndex(targets=["a", "b"], pool={"models": []}, data_fingerprint="x", n_train=1, n_val=1,
                       code_version="x", default="r", serve="r", routers={}, best_single="a",
                       output_tokens_median={"a": 5.0, "b": 7.0}, features={})
    old = OutputLengths.of_index(index)
    assert old.kind == "median" and old.describe() == "median output tokens per target"
    assert old.expected(["code"], 1).tolist() == [[5.0, 7.0]]
    assert OutputLengths.of_index(index.model_copy(update={"output_lengths": model.to_dict()})).kind == "task_mean"


def test_the_estimate_check_prices_routes_decided_on_estimates_both_ways():
    proba = np.array([[0.9, 0.95], [0.5, 0.9], [0.9, 0.92]])
    estimated = np.array([[1.0, 10.0], [1.0, 10.0], [1.0, 10.0]])
    observed = np.array([[2.0, 10.0], [2.0, 10.0], [5.0, 10.0]])
    got = estimate_check(proba, estimated, observed, tau=0.1, reference=1)
    # Rows 0 and 2 go to the cheap target (within 0.1 of the best), row 1 to the dear one.
    assert got["estimated_usd"] == pytest.approx(12.0) and got["observed_usd"] == pytest.approx(17.0)
    assert got["estimated_saving_pct"] == pytest.approx(60.0)
    assert got["observed_saving_pct"] == pytest.approx(100 * (1 - 17.0 / 30.0))


def _features_and_lengths(rng, n=400, d=24):
    """Two prefill columns; the output length of each target a linear function of the first one."""
    x = {"mean_04": rng.normal(size=(n, d)).astype(np.float32), "mean_08": rng.normal(size=(n, d)).astype(np.float32)}
    signal = x["mean_04"][:, 0].astype(np.float64)
    tokens = np.stack([200 + 80 * signal, 50 + 10 * signal], axis=1) + rng.normal(0, 5, (n, 2))
    return x, np.maximum(tokens, 0)


def test_a_length_read_from_the_prefill_features_is_fitted_saved_and_chosen_over_the_means(tmp_path):
    from router_core.lengths import LinearLengths, expected_tokens, fit_linear_lengths, with_linear
    from router_core.storage import Storage

    rng = np.random.default_rng(4)
    x, tokens = _features_and_lengths(rng)
    tasks = ["t"] * len(tokens)
    train, val = np.arange(400) < 300, np.arange(400) >= 300
    means = fit_output_lengths(tokens[train], tasks[:300], ["a", "b"], {"known": 600})
    lengths, linear = with_linear(means, x, ["mean_04", "mean_08"], tokens, tasks, train, val, "output_lengths")
    p = lengths.prefill
    assert p["use"] == {"tasks": True, "no_tasks": True} and p["validation_mae"]["prefill"] < 0.2 * p["validation_mae"]["task_mean"]
    assert "a ridge on prefill features" in lengths.describe() and OutputLengths.from_dict(lengths.to_dict()).prefill == p
    # Saved as safetensors with a manifest, and read back to the same predictions.
    linear.save(Storage(), str(tmp_path / "m" / "output_lengths"), {"targets": ["a", "b"]})
    back = LinearLengths.load(Storage(), str(tmp_path / "m" / "output_lengths"))
    got = back.predict({c: v[val] for c, v in x.items()})
    np.testing.assert_allclose(got, linear.predict({c: v[val] for c, v in x.items()}), rtol=1e-5)
    assert np.abs(got - tokens[val]).mean() < 10
    saved = tmp_path / "m" / "output_lengths"
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["kind"] == "prefill-router-output-lengths" and manifest["targets"] == ["a", "b"]
    assert manifest["columns"] == ["mean_04", "mean_08"] and len(manifest["weights_sha256"]) == 64
    (saved / "weights.safetensors").write_bytes((saved / "weights.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ArtifactError, match="SHA-256"):
        LinearLengths.load(Storage(), str(saved))
    assert expected_tokens(lengths, tasks[:100], 100, got) is got
    assert priced_by(lengths, tasks[:3], got[:3]) == "the length map on prefill features"
    assert priced_by(lengths, tasks[:3], None) == "each task's mean per target"  # the map was not computed
    assert priced_by(means, None, got[:3]) == "each target's mean"
    # A map no better than the means is kept for the record and not used.
    noise = {c: rng.normal(size=v.shape).astype(np.float32) for c, v in x.items()}
    lengths2, _ = with_linear(means, noise, ["mean_04", "mean_08"], tokens, tasks, train, val, "output_lengths")
    assert lengths2.prefill["use"] == {"tasks": False, "no_tasks": False}
    assert expected_tokens(lengths2, tasks[:100], 100, got) is not got
    # No columns (the prior serves) or no lengths: no map.
    assert with_linear(means, x, [], tokens, tasks, train, val, "f") == (means, None)
    assert with_linear(means, x, ["mean_04"], np.full_like(tokens, np.nan), tasks, train, val, "f") == (means, None)
    assert not fit_linear_lengths({"mean_04": x["mean_04"][:5]}, ["mean_04"], tokens[:5]).weight.any()  # too few: a mean
