"""Scoring routers on a held-out split: per-call costs, every metric, and the report's JSON.

The report's shape (other tools read it)::

    {"dataset", "n_test", "best_single": {"model", "accuracy", "mean_cost"},
     "oracle": {"accuracy", "mean_cost"}, "pareto_auccc",
     "routers": {name: {"accuracy", "mean_cost", "gap_closed_pct", "p_auccc", "cost_reduction_pct",
                        "mean_auc", "ece", "aiq", ["apgr", "cpt50_pct"]}}, ...}

Accuracy and cost of a router are at tau = 0 (each query to its most probable target, the
cheaper on a tie); the curve metrics sweep tau over every distinct probability gap.
"""

from __future__ import annotations

import numpy as np

from . import metrics as M
from .importers import CHARS_PER_TOKEN
from .routing import threshold_routes
from .schemas import Pool


def output_token_medians(train_output_tokens: np.ndarray) -> np.ndarray:
    """(K,) each target's median output tokens over training calls (NaN = unknown); 0 where none is known:
    the estimate of a call's output length before it is made."""
    return np.array([np.nanmedian(c) if np.isfinite(c).any() else 0.0 for c in np.asarray(train_output_tokens).T])


def call_costs(costs_observed: np.ndarray, texts: list[str], pool: Pool, targets: list[str],
               med: np.ndarray) -> tuple[np.ndarray, str]:
    """(n, K) dollars per call and how they were obtained.

    The observed ``cost_usd`` where the dataset has it; elsewhere input tokens (about 4 characters
    each) x input price + the output tokens ``med`` expected of each call (K,) or (n, K), such as
    router_core.lengths' estimate, x output price.
    """
    estimate = estimated_costs(np.array([len(t) for t in texts]), pool, targets, med)
    observed = ~np.isnan(costs_observed)
    how = "observed cost_usd" if observed.all() else \
        "estimated: tokens x prices" if not observed.any() else "observed cost_usd, else tokens x prices"
    return np.where(observed, costs_observed, estimate), how


def estimated_costs(chars: np.ndarray, pool: Pool, targets: list[str], output_tokens: np.ndarray) -> np.ndarray:
    """(n, K) dollars: input tokens (``chars`` / about 4 characters each) x input price + output
    tokens x output price, ``output_tokens`` (K,) per target or (n, K) per call."""
    prices = {m.name: m for m in pool.models}
    in_tok = (np.asarray(chars, np.float64) / CHARS_PER_TOKEN)[:, None]
    p_in = np.array([prices[t].price_in_per_mtok for t in targets]) / 1e6
    p_out = np.array([prices[t].price_out_per_mtok for t in targets]) / 1e6
    out = np.asarray(output_tokens, np.float64)
    return in_tok * p_in[None, :] + (out[None, :] if out.ndim == 1 else out) * p_out[None, :]


def score_router(proba: np.ndarray, scores: np.ndarray, costs: np.ndarray, acc_best: float,
                 acc_oracle: float) -> tuple[dict, np.ndarray]:
    """Every metric of one router on rows measured on all targets; and its (cost, accuracy) curve."""
    singles = M.single_points(scores, costs)
    c_min, c_max = singles[:, 0].min(), singles[:, 0].max()
    acc, cost = M.route_value(threshold_routes(proba, costs, 0.0), scores, costs)
    curve = M.threshold_curve(proba, scores, costs)
    row = {
        "accuracy": acc,
        "mean_cost": cost,
        "gap_closed_pct": M.gap_closed(acc, acc_best, acc_oracle),
        "p_auccc": M.p_auccc(proba, scores, costs),
        "cost_reduction_pct": M.cost_reduction(curve, acc_best, c_max),
        "mean_auc": M.mean_auc(proba, scores),
        "ece": M.ece(proba, scores),
        "aiq": M.aiq(curve, c_min, c_max),
    }
    if scores.shape[1] == 2:  # RouteLLM's figures: the dearer target is the strong one
        strong = int(singles[:, 0].argmax())
        fr, pgr = M.pgr_curve(proba[:, strong] - proba[:, 1 - strong], scores[:, strong], scores[:, 1 - strong])
        row["apgr"] = M.apgr(fr, pgr)
        row["cpt50_pct"] = M.cpt(fr, pgr, 0.5)
    return row, curve


def build_report(dataset: str, targets: list[str], scores: np.ndarray, costs: np.ndarray,
                 probas: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """The report dict and each router's curve, on rows measured on every target."""
    singles = M.single_points(scores, costs)
    best = int(singles[:, 1].argmax())
    acc_or, cost_or = M.oracle(scores, costs)
    report = {
        "dataset": dataset,
        "n_test": int(len(scores)),
        "targets": targets,
        "best_single": {"model": targets[best], "accuracy": float(singles[best, 1]),
                        "mean_cost": float(singles[best, 0])},
        "oracle": {"accuracy": acc_or, "mean_cost": cost_or},
        "pareto_auccc": M.pareto_auccc(scores, costs),
        "singles": {t: {"accuracy": float(a), "mean_cost": float(c)} for t, (c, a) in zip(targets, singles)},
        "routers": {},
    }
    curves = {}
    for name, p in probas.items():
        report["routers"][name], curves[name] = score_router(p, scores, costs, float(singles[best, 1]), acc_or)
    return report, curves


def at_operating_point(proba: np.ndarray, scores: np.ndarray, costs: np.ndarray, point: dict,
                       reference: int | None) -> dict:
    """The served router at the model's operating point (threshold tau chosen by train on held-out
    rows; ``chosen`` keeps its figures there) on these rows, against always calling the ``reference`` target (the best single on train; None =
    the best on these rows)."""
    ref = int(scores.mean(axis=0).argmax()) if reference is None else reference
    ref_acc, ref_cost = float(scores[:, ref].mean()), float(costs[:, ref].mean())

    def at(tau: float) -> dict:
        acc, cost = M.route_value(threshold_routes(proba, costs, tau), scores, costs)
        return {"tau": tau, "accuracy": acc, "mean_cost": cost,
                "saving_pct": M.saving_pct(cost, ref_cost),
                "accuracy_change_points": 100.0 * (acc - ref_acc)}

    out = dict(at(float(point["tau"])), reference_index=ref, reference_accuracy=ref_acc,
               reference_mean_cost=ref_cost, chosen=point)
    if point.get("guarded"):  # where the rule without its guard would have routed these rows
        out["without_guard"] = at(float(point["unguarded"]["tau"]))
    return out


def estimate_check(proba: np.ndarray, estimated: np.ndarray, observed: np.ndarray, tau: float,
                   reference: int) -> dict:
    """The served router's routes as ``route`` decides them (threshold ``tau`` on the ``estimated``
    costs), priced both ways: estimated and observed dollars, and the saving each way against always
    calling the ``reference`` target. What a tally estimates next to what the calls cost."""
    routes = threshold_routes(proba, estimated, tau)
    rows = np.arange(len(routes))
    est, obs = float(estimated[rows, routes].sum()), float(observed[rows, routes].sum())
    ref_est, ref_obs = float(estimated[:, reference].sum()), float(observed[:, reference].sum())
    return {"tau": tau, "queries": len(routes), "estimated_usd": est, "observed_usd": obs,
            "reference_estimated_usd": ref_est, "reference_observed_usd": ref_obs,
            "estimated_saving_pct": M.saving_pct(est, ref_est), "observed_saving_pct": M.saving_pct(obs, ref_obs)}


def reliability(proba: np.ndarray, scores: np.ndarray, bins: int = 10) -> list[tuple[float, float, int]]:
    """Pooled over targets: (mean predicted, mean observed, count) per equal-width bin."""
    p, y = proba.ravel(), scores.ravel()
    idx = np.minimum((p * bins).astype(int), bins - 1)
    return [(float(p[idx == b].mean()), float(y[idx == b].mean()), int((idx == b).sum()))
            for b in range(bins) if (idx == b).any()]


def _weighted_aucs(p: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) ROC-AUC of scores ``p`` (n,) against labels ``y`` (n,) bool, each query counted
    ``weights[b, i]`` times (ties count half); NaN where a resample has one class only."""
    order = np.argsort(p, kind="stable")
    p, y, w = p[order], y[order], weights[:, order]
    starts = np.r_[0, np.flatnonzero(p[1:] != p[:-1]) + 1]  # groups of tied scores
    wpos, wneg = w * y, w * ~y
    gpos, gneg = np.add.reduceat(wpos, starts, axis=1), np.add.reduceat(wneg, starts, axis=1)
    below = np.cumsum(gneg, axis=1) - gneg  # negatives strictly below each group
    with np.errstate(invalid="ignore", divide="ignore"):
        return (gpos * (below + 0.5 * gneg)).sum(axis=1) / (gpos.sum(axis=1) * gneg.sum(axis=1))


def paired_bootstrap(probas: dict[str, np.ndarray], scores: np.ndarray, costs: np.ndarray, router: str,
                     n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Paired bootstrap of ``router`` against every other router: the same test queries resampled
    (with replacement, seeded) for all, so the differences' spread is that of one test set's luck.

    Per other router: the observed difference (``router`` minus it) of P-AUCCC and of mean AUC, and
    the ``level`` percentile interval of each over ``n_boot`` resamples."""
    n = len(scores)
    rng = np.random.default_rng(seed)
    weights = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)]).astype(np.float64)
    singles = [np.stack([w @ costs / n, w @ scores / n], axis=1) for w in weights]
    labels = scores >= 0.5

    def resampled(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        events = M.threshold_events(p, scores, costs)
        pa = np.array([M.p_auccc_of(M.curve_from_events(events, w), s) for w, s in zip(weights, singles)])
        aucs = [_weighted_aucs(p[:, k], labels[:, k], weights) for k in range(p.shape[1])
                if labels[:, k].any() and not labels[:, k].all()]
        return pa, np.nanmean(np.stack(aucs), axis=0) if aucs else np.full(n_boot, np.nan)

    ours = resampled(probas[router])
    point = {name: (M.p_auccc(p, scores, costs), M.mean_auc(p, scores)) for name, p in probas.items()}
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out = {}
    for name, p in probas.items():
        if name == router:
            continue
        theirs = resampled(p)
        row = {}
        for j, metric in enumerate(("p_auccc", "mean_auc")):
            d = ours[j] - theirs[j]
            d = d[np.isfinite(d)]
            row[f"{metric}_diff"] = point[router][j] - point[name][j]
            row[f"{metric}_ci"] = [float(np.percentile(d, lo)), float(np.percentile(d, hi))] if len(d) else None
        out[name] = row
    return {"router": router, "n_boot": n_boot, "seed": seed, "level": level, "vs": out}
