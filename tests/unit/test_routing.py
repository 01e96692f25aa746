import numpy as np
import pytest

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
