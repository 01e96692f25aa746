"""Policies: turn per-target probabilities and per-call costs into one target per query.

All take ``proba`` (n, K), P(correct) per query and target, and ``cost`` (n, K) in dollars, and
return the chosen target index per query, (n,) int.
"""

from __future__ import annotations

import numpy as np

from .metrics import saving_pct

Z95 = 1.959964  # two-sided 95%


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


def assign(policy: str, proba: np.ndarray, cost: np.ndarray, tau: float = 0.0, lam: float = 0.0,
           budget: float | None = None) -> tuple[np.ndarray, dict]:
    """Routes by the named policy and what it decided with (its parameters, and for budget the
    multiplier found). Raises ValueError on a parameter that cannot work."""
    if policy == "threshold":
        if not 0 <= tau <= 1:
            raise ValueError(f"--tau must be in [0, 1], got {tau}")
        return threshold_routes(proba, cost, tau), {"tau": tau}
    if policy == "utility":
        if lam < 0:
            raise ValueError(f"--lam must be >= 0, got {lam}")
        return utility_routes(proba, cost, lam), {"lam": lam}
    if policy == "budget":
        if budget is None or not budget > 0:
            raise ValueError(f"--budget-usd must be a positive number of dollars, got {budget}")
        routes, lam_found = budget_routes(proba, cost, budget)
        return routes, {"budget_usd": budget, "lambda": lam_found}
    raise ValueError(f"unknown policy {policy!r} (threshold, utility, budget)")


def tally(routes: np.ndarray, proba: np.ndarray, cost: np.ndarray, targets: list[str], best_single: int) -> dict:
    """Per target: queries routed, share, estimated dollars; totals against always calling the most
    expensive target (by mean cost over this batch) and always the best single one; expected accuracy
    (the mean predicted probability of each chosen call)."""
    n = len(routes)
    rows = np.arange(n)
    chosen_cost = cost[rows, routes]
    counts = np.bincount(routes, minlength=len(targets))
    dollars = np.bincount(routes, weights=chosen_cost, minlength=len(targets))
    dear = int(cost.mean(axis=0).argmax()) if n else 0
    total = float(chosen_cost.sum())

    def baseline(k: int) -> dict:
        c = float(cost[:, k].sum())
        return {"model": targets[k], "cost_usd": c, "expected_accuracy": float(proba[:, k].mean()) if n else 0.0,
                "saving_pct": saving_pct(total, c)}

    return {
        "queries": n,
        "per_model": {t: {"queries": int(counts[k]), "share": float(counts[k] / n) if n else 0.0,
                          "cost_usd": float(dollars[k])} for k, t in enumerate(targets)},
        "total_cost_usd": total,
        "expected_accuracy": float(proba[rows, routes].mean()) if n else 0.0,
        "always_most_expensive": baseline(dear),
        "always_best_single": baseline(best_single),
    }


def route_tally(routes: np.ndarray, proba: np.ndarray, cost: np.ndarray, targets: list[str], best_single: int,
                policy: str, info: dict, operating_point: dict | None, router: str = "") -> dict:
    """``tally`` with the policy that made it (``info``: its parameters) and the ``router``. At the
    model's operating point (``operating_point``, train's record, where its tau is the one used) it
    says so, and what the point promises a batch of this size (``batch_promise``); a budget says the
    dollars used; best_single (each target's training mean, served where routing does not pay) says so."""
    tal = dict(tally(routes, proba, cost, targets, best_single), policy={"name": policy, **info}, router=router)
    if router == "best_single":
        tal["note"] = ("each target's training mean serves: train found that routing does not pay on this pool (or "
                       "that no router could promise to stay within the tolerance of it on a batch), so "
                       f"every query goes to {targets[best_single]} (or a cheaper target within tau of it)")
    op = operating_point or {}
    if policy == "threshold" and op and info.get("tau") == op.get("tau"):
        tal["policy"]["source"] = "the model's operating point (chosen by train on held-out rows)"
        promise = batch_promise(op, len(routes))
        if promise:
            tal["promise"] = promise
    if policy == "budget":
        tal["policy"]["used_usd"] = tal["total_cost_usd"]
    return tal


def change_interval(op: dict, batch: int | None = None) -> tuple[float, float]:
    """The 95% interval of the accuracy change ``op`` promises: of the mean (``batch`` None), or of
    what a batch of ``batch`` queries like those rows will show, its own sampling included
    (sqrt(se^2 + sd^2 / batch))."""
    c, se = op["accuracy_change"], op["accuracy_change_se"]
    if batch:
        se = float(np.sqrt(se ** 2 + op.get("accuracy_change_sd", 0.0) ** 2 / batch))
    return c - Z95 * se, c + Z95 * se


def batch_promise(op: dict, batch: int) -> dict | None:
    """What the operating point ``op`` promises a batch of ``batch`` queries like the rows it was
    chosen on: the accuracy change against always calling the best single target, in points, with
    its 95% interval (``change_interval``, the batch's own sampling included). None for a record
    without the figures (a model saved before them)."""
    if "accuracy_change_se" not in op or "accuracy_change_sd" not in op:
        return None
    lo, hi = change_interval(op, batch)
    return {"accuracy_change_points": 100 * op["accuracy_change"], "interval_points": [100 * lo, 100 * hi],
            "batch": int(batch), "rows": op["rows"], "operating_rule": op["operating_rule"],
            "fallback": op.get("fallback"), "made_for_batch": op.get("promise_batch")}


def rows_phrase(rows: dict[str, int]) -> str:
    """An operating point's ``rows`` as words: "1886 out-of-fold + 319 validation"."""
    return " + ".join(f"{n} {k.replace('_', '-')}" for k, n in rows.items())


def promise_line(promise: dict, best_single: str) -> str:
    """``batch_promise``'s record in one line, for route's printout."""
    lo, hi = promise["interval_points"]
    on = rows_phrase(promise["rows"])
    made = promise.get("made_for_batch")
    smaller = (f"; train bounded it for a batch of {made}, and a smaller batch scatters more"
               if made and promise["batch"] < made else "")
    return (f"promised at the operating point, for a batch of {promise['batch']} like train's held-out rows: "
            f"{promise['accuracy_change_points']:+.2f} points against always calling {best_single} "
            f"(95% interval {lo:+.2f} to {hi:+.2f}; from {on} rows{smaller})")
