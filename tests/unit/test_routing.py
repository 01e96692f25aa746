import numpy as np
import pyarrow as pa
import pytest

from jobs.route import _run_id
from router_core.config import Policy

from router_core.routing import budget_routes, threshold_routes, utility_routes

P = np.array([[0.9, 0.8, 0.2], [0.5, 0.55, 0.6], [0.3, 0.9, 0.95]])
C = np.array([[3.0, 1.0, 0.1], [3.0, 1.0, 0.1], [3.0, 1.0, 0.1]])


def test_threshold_policy_extremes_and_middle():
    assert threshold_routes(P, C, 0.0).tolist() == [0, 2, 2]  # argmax
    assert threshold_routes(P, C, 1.0).tolist() == [2, 2, 2]  # always the cheapest
    assert threshold_routes(P, C, 0.15).tolist() == [1, 2, 2]


def test_utility_policy():
    assert utility_routes(P, C, 0.0).tolist() == [0, 2, 2]
    assert utility_routes(P, C, 0.06).tolist() == [1, 2, 2]


def test_budget_policy_fits_and_spends_on_the_best_gain():
    routes, lam = budget_routes(P, C, budget=1.3)
    total = C[np.arange(3), routes].sum()
    assert total <= 1.3 and routes.tolist() == [1, 2, 2]
    routes, lam = budget_routes(P, C, budget=100)
    assert lam == 0.0 and routes.tolist() == [0, 2, 2]
    with pytest.raises(ValueError, match="below the cheapest"):
        budget_routes(P, C, budget=0.2)
    with pytest.raises(ValueError, match="must be positive"):
        budget_routes(P, C, budget=0)


def test_tally_by_hand():
    from router_core.routing import tally

    proba = np.array([[0.9, 0.5], [0.2, 0.8], [0.6, 0.7]])
    cost = np.array([[1.0, 4.0], [1.0, 4.0], [2.0, 6.0]])
    t = tally(np.array([0, 1, 0]), proba, cost, ["cheap", "dear"], best_single=1)
    assert t["per_model"]["cheap"] == {"queries": 2, "share": 2 / 3, "cost_usd": 3.0}
    assert t["per_model"]["dear"] == {"queries": 1, "share": 1 / 3, "cost_usd": 4.0}
    assert t["total_cost_usd"] == 7.0 and t["expected_accuracy"] == pytest.approx((0.9 + 0.8 + 0.6) / 3)
    dear = t["always_most_expensive"]
    assert dear["model"] == "dear" and dear["cost_usd"] == 14.0 and dear["saving_pct"] == pytest.approx(50.0)
    assert t["always_best_single"]["expected_accuracy"] == pytest.approx(2.0 / 3)


def test_assign_refuses_bad_parameters():
    from router_core.routing import assign

    p, c = np.array([[0.5, 0.6]]), np.array([[1.0, 2.0]])
    for kw in ({"budget": 0.0}, {"budget": -1.0}, {"budget": None}):
        with pytest.raises(ValueError, match="positive number of dollars"):
            assign("budget", p, c, **kw)
    with pytest.raises(ValueError, match="tau"):
        assign("threshold", p, c, tau=1.5)
    routes, info = assign("budget", p, c, budget=1.5)
    assert routes.tolist() == [0] and info["budget_usd"] == 1.5


def test_run_id_covers_every_row_of_the_batch():
    ids = [f"q{i}" for i in range(100)]
    keys = pa.table({"query_id": ids, "text_hash": [f"h{i}" for i in range(100)]})
    edited = keys.set_column(1, "text_hash", pa.array([f"h{i}" if i != 50 else "other" for i in range(100)]))
    run = _run_id(None, keys, {"weights_sha256": "w"}, Policy())
    assert run == _run_id(None, keys, {"weights_sha256": "w"}, Policy())
    assert run != _run_id(None, edited, {"weights_sha256": "w"}, Policy())  # a row in the middle changed
    assert run != _run_id(None, keys, {"weights_sha256": "w"}, Policy(name="utility", lam=1.0))
    assert _run_id("given", keys, {}, Policy()) == "given"
