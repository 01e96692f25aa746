"""Policies: turn per-target probabilities and per-call costs into one target per query.

All take ``proba`` (n, K), P(correct) per query and target, and ``cost`` (n, K) in dollars, and
return the chosen target index per query, (n,) int.
"""

from __future__ import annotations

import numpy as np


def threshold_routes(proba: np.ndarray, cost: np.ndarray, tau: float) -> np.ndarray:
    """Cheapest target whose probability is within ``tau`` of the best: tau 0 = argmax, 1 = cheapest."""
    ok = proba >= proba.max(axis=1, keepdims=True) - tau - 1e-12
    return np.where(ok, cost, np.inf).argmin(axis=1)


def utility_routes(proba: np.ndarray, cost: np.ndarray, lam: float) -> np.ndarray:
    """argmax of ``p - lam * cost`` (lam in accuracy per dollar)."""
    return (proba - lam * cost).argmax(axis=1)


def budget_routes(proba: np.ndarray, cost: np.ndarray, budget: float, iters: int = 100) -> tuple[np.ndarray, float]:
    """Maximise expected accuracy subject to total cost <= ``budget``, for the whole batch.

    The Lagrangian relaxation routes each query by ``argmax p - lam * cost``; total cost falls as
    lam grows, so lam is found by bisection: the smallest lam whose routes fit the budget. Returns
    (routes, lam). Raises ValueError when even the cheapest target for every query is over budget.
    """
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    cheapest = cost.min(axis=1).sum()
    if cheapest > budget:
        raise ValueError(f"budget {budget:.6g} is below the cheapest possible total {cheapest:.6g}")
    rows = np.arange(len(proba))
    free = utility_routes(proba, cost, 0.0)
    if cost[rows, free].sum() <= budget:
        return free, 0.0
    lo, hi = 0.0, 1.0
    while cost[rows, utility_routes(proba, cost, hi)].sum() > budget:
        hi *= 2
        if hi > 1e18:
            break
    for _ in range(iters):
        mid = (lo + hi) / 2
        if cost[rows, utility_routes(proba, cost, mid)].sum() > budget:
            lo = mid
        else:
            hi = mid
    return utility_routes(proba, cost, hi), hi
