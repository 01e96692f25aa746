"""The choice rules replayed by tests/bench/replay_rules.py, on synthetic held-out rows."""

import numpy as np

from router_core.held_out import HeldOut
from router_core.routing import threshold_routes
from tests.bench import replay_rules as R


def _rows(n=600, seed=0):
    rng = np.random.default_rng(seed)
    scores = (rng.random((n, 3)) < [0.4, 0.5, 0.8]).astype(float)
    costs = np.tile([1.0, 4.0, 3.0], (n, 1))  # target 1 is dominated: dearer than 2 and less often right
    return scores, costs, np.arange(n) % 3, rng


def test_the_stack_leans_on_the_candidate_that_knows_and_keeps_every_weight_positive():
    scores, costs, part, rng = _rows()
    good = np.clip(scores * 0.7 + 0.15 + rng.normal(0, 0.05, scores.shape), 0.01, 0.99)
    noise = rng.uniform(0.05, 0.95, scores.shape)
    w = R._stack(np.stack([good, noise]), scores)
    assert w.sum() == 1 or np.isclose(w.sum(), 1)
    assert w[0] > 0.65 and w[1] >= 0.25  # shrunk halfway toward equal weights: never below 1 / (2J)


def test_per_target_takes_each_column_from_the_candidate_that_orders_it():
    scores, costs, part, rng = _rows()
    a = rng.uniform(0.05, 0.95, scores.shape)
    b = rng.uniform(0.05, 0.95, scores.shape)
    a[:, 0] = np.clip(scores[:, 0] * 0.6 + 0.2 + rng.normal(0, 0.1, len(scores)), 0, 1)  # a knows target 0
    b[:, 2] = np.clip(scores[:, 2] * 0.6 + 0.2 + rng.normal(0, 0.1, len(scores)), 0, 1)  # b knows target 2
    h = HeldOut("out-of-fold training", {"prefill_trunk": a, "prefill_logreg": b}, scores, costs, part)
    w = R.weights("per_target", h.proba, h)
    assert w[0, 0] == 1 and w[1, 2] == 1 and np.allclose(w.sum(axis=0), 1)


def test_mean_within_noise_averages_the_tied_and_drops_the_far_worse():
    scores, costs, part, rng = _rows()
    good = np.clip(scores * 0.6 + 0.2 + rng.normal(0, 0.1, scores.shape), 0.01, 0.99)
    twin = good.copy()  # a tie: a gap of 0 is within any standard error
    noise = rng.uniform(0.05, 0.95, scores.shape)
    h = HeldOut("validation", {"prefill_trunk": good, "prefill_logreg": twin, "prefill_trunk_platt": noise},
                scores, costs, part)
    w = R.weights("mean_se", h.proba, h)
    assert np.allclose(w[:, 0], [0.5, 0.5, 0])
    assert R.weights("today", h.proba, h)[:, 0].tolist() in ([1, 0, 0], [0, 1, 0])


def test_a_target_off_the_front_is_never_routed_to_at_any_threshold_up_to_one():
    scores, costs, part, rng = _rows()
    p = rng.uniform(0.05, 0.95, scores.shape)
    h = HeldOut("validation", {"prefill_trunk": p}, scores, costs, part)
    hs, ts = R.candidate_set(h, h, "+front")
    assert set(hs) == {"prefill_trunk", "prefill_trunk@front"}  # best_single only where the test rows have it
    masked = hs["prefill_trunk@front"]
    assert (masked[:, 1] == R.MASKED).all() and np.array_equal(masked[:, [0, 2]], p[:, [0, 2]])
    for tau in (0.0, 0.3, 0.9, 1.0):
        assert not (threshold_routes(masked, costs, tau) == 1).any()
