"""Known answers on hand-computed toys."""

import numpy as np
import pytest

from router_core import metrics as M

# 4 queries, 3 targets: cheap (cost 1), mid (cost 2), dear (cost 4).
S = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]], dtype=float)
C = np.tile([1.0, 2.0, 4.0], (4, 1))


def test_singles_and_oracle():
    assert M.single_points(S, C).tolist() == [[1.0, 0.25], [2.0, 0.5], [4.0, 0.75]]
    acc, cost = M.oracle(S, C)
    # q0 -> cheap, q1 -> mid, q2 -> dear, q3 (nobody right) -> cheap: cost (1 + 2 + 4 + 1) / 4.
    assert acc == 0.75 and cost == 2.0
    assert M.gap_closed(0.7, 0.6, 0.8) == pytest.approx(50.0)


def test_area_above_floor_by_hand():
    # Floor 0.25 over [1, 4]; one point (2, 0.75) then flat to 4:
    # ramp 1->2: (0 + 0.5) / 2 * 1 = 0.25; flat 2->4: 0.5 * 2 = 1.0; total 1.25 / 3.
    pts = np.array([[2.0, 0.75]])
    assert M.area_above_floor(pts, 1.0, 4.0, 0.25) == pytest.approx(1.25 / 3)


def test_p_auccc_of_a_perfect_router_and_of_the_singles():
    # Probabilities equal to the labels: gaps {0, 1}. tau 0 routes like the oracle: (2.0, 0.75);
    # tau 1 always takes the cheapest: (1.0, 0.25). Area over floor 0.25 on [1, 4]:
    # (1,0)-(2,0.5): 0.25; flat 0.5 from 2 to 4: 1.0; total 1.25 / 3.
    assert M.threshold_curve(S, S, C).tolist() == [[1.0, 0.25], [2.0, 0.75]]
    assert M.p_auccc(S, S, C) == pytest.approx(1.25 / 3)
    # Singles' frontier (1, .25) -> (2, .5) -> (4, .75): 0.125 + 0.75 = 0.875 over 3.
    assert M.pareto_auccc(S, C) == pytest.approx(0.875 / 3)
    # A router that ranks the targets backwards does worse than the singles' frontier.
    assert M.p_auccc(1 - S, S, C) < M.pareto_auccc(S, C)


def test_cost_reduction_and_pareto():
    curve = np.array([[1.0, 0.5], [1.5, 0.76], [3.0, 0.8]])
    assert M.cost_reduction(curve, 0.75, 4.0) == pytest.approx(62.5)
    assert M.cost_reduction(curve, 0.9, 4.0) is None
    front = M.pareto_front(np.array([[1, 0.2], [2, 0.1], [3, 0.5], [3, 0.4]]))
    assert front.tolist() == [[1, 0.2], [3, 0.5]]


def test_aiq_uses_the_convex_hull():
    pts = np.array([[1.0, 0.2], [2.0, 0.3], [3.0, 0.8]])
    # Hull drops (2, .3): the segment (1, .2)-(3, .8) has area (0.2 + 0.8) / 2 * 2 = 1.0 over [1, 3].
    assert M.aiq(pts, 1.0, 3.0) == pytest.approx(0.5)


def test_roc_auc_and_ece():
    assert M.roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    assert M.roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    assert M.roc_auc(np.array([0.1, 0.2]), np.array([1, 1])) is None
    p = np.array([[0.9], [0.9], [0.1], [0.1]])
    y = np.array([[1.0], [1.0], [0.0], [0.0]])
    assert M.ece(p, y) == pytest.approx(0.1)


def test_pgr_apgr_and_cpt_by_hand():
    # 4 queries; weak right on q0 only, strong right on q0, q1, q2. Router prefers strong for q1, q2, q0, q3.
    s_weak = np.array([1.0, 0, 0, 0])
    s_strong = np.array([1.0, 1, 1, 0])
    prefer = np.array([0.5, 0.9, 0.8, 0.1])
    fr, pgr = M.pgr_curve(prefer, s_strong, s_weak, steps=4)
    # shares 0, 1/4, 2/4, 3/4, 1: accuracy 1/4, 2/4, 3/4, 3/4, 3/4; gap 3/4 - 1/4 = 1/2.
    assert fr.tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    assert pgr.tolist() == pytest.approx([0, 0.5, 1, 1, 1])
    # trapezoids: 0.25 * (0.25 + 0.75 + 1 + 1) = 0.75
    assert M.apgr(fr, pgr) == pytest.approx(0.75)
    assert M.cpt(fr, pgr, 0.5) == 25.0 and M.cpt(fr, pgr, 1.0) == 50.0
    assert M.cpt(fr, np.zeros(5), 0.5) is None


def test_ece_skips_unmeasured_pairs():
    p = np.array([[0.9, 0.2], [0.9, 0.2]])
    s = np.array([[1.0, np.nan], [0.0, 0.0]])
    # target 0: one bin, |0.9 - 0.5| = 0.4; target 1: only row 1, |0.2 - 0| = 0.2.
    assert M.ece(p, s) == pytest.approx(0.3)


def _slow_curve(proba, scores, costs):
    """The definition, one tau at a time: every distinct gap, routes by the threshold policy."""
    from router_core.routing import threshold_routes

    gaps = np.unique(np.round(proba.max(axis=1, keepdims=True) - proba, 12))
    pts = np.array([M.route_value(threshold_routes(proba, costs, float(t)), scores, costs)[::-1] for t in gaps])
    return np.unique(np.round(pts, 10), axis=0)


@pytest.mark.parametrize("seed", range(6))
def test_event_curve_equals_the_definition(seed):
    rng = np.random.default_rng(seed)
    n, K = 60, 5
    proba = rng.random((n, K))
    if seed % 2:  # ties: rounded probabilities, equal costs, constant rows
        proba = np.round(proba, 1)
        proba[:10] = 0.5
    scores = (rng.random((n, K)) < 0.6).astype(float)
    costs = np.tile(rng.choice([1.0, 2.0, 2.0, 3.0, 5.0], K), (n, 1)) * rng.uniform(0.5, 1.5, (n, 1))
    fast = M.threshold_curve(proba, scores, costs)
    np.testing.assert_allclose(np.unique(np.round(fast, 10), axis=0), _slow_curve(proba, scores, costs))
    # Weights = a resample's counts: the same curve as the resampled rows themselves.
    idx = rng.integers(0, n, n)
    w = np.bincount(idx, minlength=n)
    weighted = M.curve_from_events(M.threshold_events(proba, scores, costs), w)  # zero weights: repeated points
    np.testing.assert_allclose(np.unique(np.round(weighted, 10), axis=0), _slow_curve(proba[idx], scores[idx], costs[idx]))
