"""Evaluation metrics of a router on a held-out split (see METHOD.md for the definitions).

Arrays: ``scores`` (n, K) observed score of each target (1 = correct; graded allowed),
``costs`` (n, K) dollars per call, ``proba`` (n, K) a router's P(correct). All rows are queries
that every target was measured on.
"""

from __future__ import annotations

import numpy as np



def saving_pct(cost: float, reference_cost: float) -> float:
    """How much cheaper ``cost`` is than ``reference_cost``, in percent (0 where the reference is free)."""
    return 100.0 * (1 - cost / reference_cost) if reference_cost > 0 else 0.0


def route_value(routes: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cost) of sending query i to target routes[i]."""
    rows = np.arange(len(routes))
    return float(scores[rows, routes].mean()), float(costs[rows, routes].mean())


def single_points(scores: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """(K, 2): mean cost and accuracy of always calling each target."""
    return np.stack([costs.mean(axis=0), scores.mean(axis=0)], axis=1)


def oracle(scores: np.ndarray, costs: np.ndarray) -> tuple[float, float]:
    """Per query the cheapest target with the best score: (accuracy, mean cost)."""
    best = scores.max(axis=1, keepdims=True)
    routes = np.where(scores >= best - 1e-12, costs, np.inf).argmin(axis=1)
    return route_value(routes, scores, costs)


def gap_closed(acc_router: float, acc_best: float, acc_oracle: float) -> float:
    """100 x (router - best single) / (oracle - best single)."""
    return 100.0 * (acc_router - acc_best) / (acc_oracle - acc_best) if acc_oracle > acc_best else 0.0


def threshold_events(proba: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> tuple[np.ndarray, ...]:
    """The threshold policy's routes as tau grows, as events: (tau, query, change in score, change in
    cost), sorted by tau. Query q's route at tau is the cheapest target (lowest index on a cost tie)
    among those with gap ``p_max - p_m <= tau``; it changes only where a cheaper target comes in, so
    each query has at most K events and the whole curve is a cumulative sum (O(nK log nK))."""
    n, K = proba.shape
    gaps = np.round(proba.max(axis=1, keepdims=True) - proba, 12)
    by_cost = np.lexsort((np.broadcast_to(np.arange(K), (n, K)), costs), axis=1)  # per row: cost, then index
    rank = np.empty_like(by_cost)
    np.put_along_axis(rank, by_cost, np.broadcast_to(np.arange(K), (n, K)), axis=1)
    by_gap = np.argsort(gaps, axis=1, kind="stable")
    best_rank = np.minimum.accumulate(np.take_along_axis(rank, by_gap, axis=1), axis=1)
    route = np.take_along_axis(by_cost, best_rank, axis=1)  # (n, K): the route once j+1 targets are in
    changed = np.ones((n, K), bool)
    changed[:, 1:] = route[:, 1:] != route[:, :-1]
    q, j = np.nonzero(changed)
    tgt = route[q, j]
    prev = np.where(j > 0, route[q, np.maximum(j - 1, 0)], -1)
    d_score = scores[q, tgt] - np.where(prev >= 0, scores[q, np.maximum(prev, 0)], 0.0)
    d_cost = costs[q, tgt] - np.where(prev >= 0, costs[q, np.maximum(prev, 0)], 0.0)
    tau = np.take_along_axis(gaps, by_gap, axis=1)[q, j]
    order = np.argsort(tau, kind="stable")
    return tau[order], q[order], d_score[order], d_cost[order]


def curve_from_events(events: tuple[np.ndarray, ...], weights: np.ndarray | None = None) -> np.ndarray:
    """(m, 2) points (mean cost, accuracy), one per distinct tau of ``events``, sorted by cost; query
    ``q`` counts ``weights[q]`` times (a bootstrap resample's counts; None = once each)."""
    tau, q, d_score, d_cost = events
    w = np.ones(q.max() + 1 if len(q) else 0) if weights is None else np.asarray(weights, np.float64)
    total = w.sum()
    acc, cost = np.cumsum(d_score * w[q]) / total, np.cumsum(d_cost * w[q]) / total
    last = np.r_[tau[1:] != tau[:-1], True]  # the state after every event of one tau
    pts = np.stack([cost[last], acc[last]], axis=1)
    return pts[np.lexsort((pts[:, 1], pts[:, 0]))]


def threshold_curve(proba: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """(m, 2) points (mean cost, accuracy) for tau over every distinct gap p_max - p_m where a route
    changes, sorted by cost."""
    return curve_from_events(threshold_events(proba, scores, costs))


def area_above_floor(points: np.ndarray, c_min: float, c_max: float, floor: float) -> float:
    """Normalised trapezoid area of (accuracy - floor) over [c_min, c_max].

    The curve starts at (c_min, floor), runs through the points sorted by cost (clipped to the
    range), and stays flat at the last point's accuracy up to c_max.
    """
    if c_max <= c_min:
        return 0.0
    pts = points[np.argsort(points[:, 0], kind="stable")]
    pts = pts[(pts[:, 0] >= c_min) & (pts[:, 0] <= c_max)]
    xs = np.concatenate([[c_min], pts[:, 0], [c_max]])
    ys = np.concatenate([[floor], pts[:, 1], [pts[-1, 1] if len(pts) else floor]])
    ys = ys - floor
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2) / (c_max - c_min))


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Points not beaten by a cheaper-or-equal point of higher-or-equal accuracy, by cost."""
    pts = points[np.lexsort((-points[:, 1], points[:, 0]))]
    out, best = [], -np.inf
    for c, a in pts:
        if a > best:
            out.append((c, a))
            best = a
    return np.array(out)


def p_auccc(proba: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> float:
    return p_auccc_of(threshold_curve(proba, scores, costs), single_points(scores, costs))


def p_auccc_of(curve: np.ndarray, singles: np.ndarray) -> float:
    """P-AUCCC of a threshold curve against the singles' (K, 2) points (cost range and floor)."""
    cheap, dear = singles[:, 0].argmin(), singles[:, 0].argmax()
    return area_above_floor(curve, singles[cheap, 0], singles[dear, 0], singles[cheap, 1])


def pareto_auccc(scores: np.ndarray, costs: np.ndarray) -> float:
    singles = single_points(scores, costs)
    cheap, dear = singles[:, 0].argmin(), singles[:, 0].argmax()
    return area_above_floor(pareto_front(singles), singles[cheap, 0], singles[dear, 0], singles[cheap, 1])


def cost_reduction(curve: np.ndarray, acc_best: float, cost_most_expensive: float) -> float | None:
    """100 x (1 - cost / most expensive) at the cheapest point at least as accurate as the best single."""
    ok = curve[curve[:, 1] >= acc_best - 1e-12]
    return None if not len(ok) else 100.0 * (1 - ok[:, 0].min() / cost_most_expensive)


def aiq(points: np.ndarray, c_min: float, c_max: float) -> float:
    """RouterBench's AIQ: area under the non-decreasing convex hull of (cost, quality), normalised."""
    pts = pareto_front(points)
    hull: list[tuple[float, float]] = []
    for p in pts:  # upper hull of a cost-sorted, accuracy-increasing sequence
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append((float(p[0]), float(p[1])))
    h = np.array(hull)
    if c_max <= c_min:
        return 0.0
    xs = np.clip(h[:, 0], c_min, c_max)
    xs = np.concatenate([xs, [c_max]])
    ys = np.concatenate([h[:, 1], [h[-1, 1]]])
    area = np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2)  # nothing is reachable below the cheapest point
    return float(area / (c_max - c_min))


def roc_auc(p: np.ndarray, y: np.ndarray) -> float | None:
    """ROC-AUC (scikit-learn's; ties count half); None when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return None
    return float(roc_auc_score(y, np.asarray(p)))


def mean_auc(proba: np.ndarray, scores: np.ndarray) -> float:
    """Mean over targets of ROC-AUC of P(correct) against score >= 0.5."""
    aucs = [roc_auc(proba[:, k], scores[:, k] >= 0.5) for k in range(proba.shape[1])]
    aucs = [a for a in aucs if a is not None]
    return float(np.mean(aucs)) if aucs else float("nan")


def ece(proba: np.ndarray, scores: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error (equal-width bins), averaged over targets; NaN scores are skipped."""
    out = []
    for k in range(proba.shape[1]):
        m = ~np.isnan(scores[:, k])
        if not m.any():
            continue
        p, y = proba[m, k], scores[m, k]
        idx = np.minimum((p * bins).astype(int), bins - 1)
        e = 0.0
        for b in range(bins):
            m = idx == b
            if m.any():
                e += m.mean() * abs(p[m].mean() - y[m].mean())
        out.append(e)
    return float(np.mean(out))


def pgr_curve(prefer_strong: np.ndarray, s_strong: np.ndarray, s_weak: np.ndarray,
              steps: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """RouteLLM's performance gap recovered against the share of calls sent to the strong model.

    The ``round(f * n)`` queries the router most prefers for the strong model go to it, for f on a
    grid of ``steps + 1`` shares in [0, 1]. PGR = (accuracy - weak) / (strong - weak).
    """
    n = len(prefer_strong)
    order = np.argsort(-np.asarray(prefer_strong), kind="stable")
    gain = np.concatenate([[0.0], np.cumsum(s_strong[order] - s_weak[order])])
    fracs = np.linspace(0.0, 1.0, steps + 1)
    acc = (s_weak.sum() + gain[np.round(fracs * n).astype(int)]) / n
    gap = s_strong.mean() - s_weak.mean()
    return fracs, (acc - s_weak.mean()) / gap if gap > 0 else np.zeros_like(fracs)


def apgr(fracs: np.ndarray, pgr: np.ndarray) -> float:
    """Average PGR over the call share (trapezoid rule on [0, 1])."""
    return float(np.sum((fracs[1:] - fracs[:-1]) * (pgr[1:] + pgr[:-1]) / 2))


def cpt(fracs: np.ndarray, pgr: np.ndarray, level: float = 0.5) -> float | None:
    """Smallest share of strong-model calls (in %) whose PGR reaches ``level``; None if never."""
    ok = np.nonzero(pgr >= level - 1e-12)[0]
    return None if not len(ok) else float(100.0 * fracs[ok[0]])
