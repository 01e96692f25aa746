"""Choosing what ``route`` serves, and at which operating point.

Routing quality is P-AUCCC (metrics), so candidates are compared by it, on held-out rows: the
validation rows, or (``OutOfFold``, train.cross_fit) the training rows each predicted
by refits that did not see it, several times as many rows to choose with.

- **Cross-validated scores.** Those rows are split into ``folds`` parts, ``repeats``
  times (seeded). A blend (routers.BlendRouter: calibration, shrinkage toward the prior, a stack)
  is fitted on the other parts and scored on each part; a router with nothing left to fit is
  scored on the same parts. A candidate's score is the mean over parts, so every candidate is
  judged on rows it was not fitted on, in the same way. Out-of-fold rows are scored part by
  cross-fit part instead (each part predicted by one refit): a threshold curve over rows of several
  refits averages policies that disagree on the threshold, which lowered the routers built on the
  task prior by 0.01-0.03 P-AUCCC (docs/study.md, 2026-12-04 (4)).
- **The simpler router within noise.** The winner is the simplest candidate whose mean score is
  at least the best's minus one standard error of their paired per-part difference (the one
  standard error rule): a more complex router has to pay for itself. The prior itself
  (``PRIORS``) serves where it is the best (``route`` then encodes nothing), never for being simple.
- **Operating point.** On every held-out row (the out-of-fold training rows plus validation), the
  cheapest threshold policy whose *measured* accuracy, row by row against always calling the best
  single target, is within a tolerance of it at a one-sided bound (``operating_point_measured``):
  the saving a user gets by default. The earlier rule, on the router's expected accuracy over
  validation alone, stays for the study (``operating_point``, train.operating_rule: expected).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import metrics as M
from .held_out import HeldOut
from .routers import BlendRouter, MixMean, MixRouter
from .routing import Z95, change_interval, rows_phrase, threshold_routes


@dataclass(frozen=True)
class OperatingRule:
    """How train chooses route's default threshold: train.operating_rule and its settings
    (accuracy_tolerance, accuracy_guard_z, promise_batch, fallback_best_single; see config.TrainConfig).
    Its own defaults are the bare measured rule (the mean's bound, no fallback), for studies and tests;
    ``OperatingRule.of(cfg.train)`` is the one train uses (by default a batch of 1000, with the fallback)."""

    rule: str = "measured"
    tolerance: float = 0.005
    guard_z: float | None = 1.645
    batch: int | None = None
    fallback_best_single: bool = False

    @classmethod
    def of(cls, tc) -> OperatingRule:
        """The rule a TrainConfig names."""
        return cls(tc.operating_rule, tc.accuracy_tolerance, tc.accuracy_guard_z, tc.promise_batch,
                   tc.fallback_best_single)


@dataclass
class Scored:
    mean: float
    per_part: np.ndarray  # (repeats * folds,) P-AUCCC on each held-out part
    oof: np.ndarray  # (n, K) out-of-fold probabilities of the first repeat


def parts_of(n: int, folds: int, repeats: int, seed: int) -> list[np.ndarray]:
    """``repeats`` seeded partitions of range(n) into ``folds`` parts, as a flat list of parts."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(repeats):
        out += np.array_split(rng.permutation(n), folds)
    return out


def cv_scores(fixed: dict[str, np.ndarray], blends: dict[str, tuple[BlendRouter, np.ndarray]], scores: np.ndarray,
              costs: np.ndarray, folds: int = 2, repeats: int = 5, seed: int = 0,
              groups: np.ndarray | None = None) -> dict[str, Scored]:
    """Every candidate's cross-validated P-AUCCC on validation rows measured on every target.

    ``fixed``: name -> (n, K) validation probabilities of a router fitted without these rows;
    ``blends``: name -> (an unfitted blend, its components' (n, K, J) validation logits).
    ``groups``: each row's cross-fit part (out-of-fold rows). Then the parts scored are those
    groups, one by one: a part's probabilities all come from one refit. P-AUCCC over rows of several
    refits averages policies whose thresholds differ (the task prior of one refit sends a task's
    queries to another target than the next refit's at the same threshold), which lies below
    either policy's curve and costs the routers that lean on the prior most."""
    n = len(scores)
    if groups is not None:
        parts, folds = [np.flatnonzero(groups == g) for g in np.unique(groups)], len(np.unique(groups))
    else:
        parts = parts_of(n, folds, repeats, seed)
    out: dict[str, Scored] = {}
    for name, p in fixed.items():
        out[name] = Scored(0.0, np.array([M.p_auccc(p[i], scores[i], costs[i]) for i in parts]), p)
    for name, (blend, z) in blends.items():
        per, oof = [], np.zeros(scores.shape)
        for j, i in enumerate(parts):
            fit_rows = np.setdiff1d(np.arange(n), i)
            b = type(blend)(blend.kind, blend.components, blend.per_target, blend.l2).fit(
                z[fit_rows], scores[fit_rows], costs[fit_rows], groups=None if groups is None else groups[fit_rows])
            p = b.proba_of(z[i])
            per.append(M.p_auccc(p, scores[i], costs[i]))
            if j < folds:
                oof[i] = p
        out[name] = Scored(0.0, np.array(per), oof)
    for s in out.values():
        s.mean = float(s.per_part.mean())
    return out


def choose(scored: dict[str, Scored], complexity: dict[str, int], null: str | tuple[str, ...] | None = None
           ) -> tuple[str, dict]:
    """The simplest candidate within one standard error of the best (see the module's docstring).

    ``null`` (the prior, or several: the prior and each target's mean) serves only where it is the
    best; otherwise it is not picked for being simple. Out-of-fold rows do not measure the learned routers' gain over the prior well (the
    learned routers there are one-seed refits on four fifths of train, the prior is exact): on
    RouteLLM-2 the served router was 0.003 above the prior out of fold and 0.007 above it on test,
    and picking the prior within one standard error cost 0.005 on test (docs/study.md, 2026-12-04 (5))."""
    best = max(scored, key=lambda k: scored[k].mean)
    table = {}
    for name, s in scored.items():
        d = scored[best].per_part - s.per_part
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
        table[name] = {"val_p_auccc": s.mean, "gap_to_best": float(d.mean()), "se": se,
                       "within_noise": bool(d.mean() <= se), "complexity": complexity.get(name, 9)}
    nulls = (null,) if isinstance(null, str) else tuple(null or ())
    for k in nulls:  # ties: the first (the prior before each target's mean)
        if k in scored and all(scored[k].mean >= s.mean for s in scored.values()):
            return k, {"best": k, "winner": k, "candidates": table}
    ok = [k for k, v in table.items() if v["within_noise"] and k not in nulls]
    winner = min(ok, key=lambda k: (table[k]["complexity"], -table[k]["val_p_auccc"]))
    return winner, {"best": best, "winner": winner, "candidates": table}


RULE = ("one standard error, the rule with the smallest worst-case regret of those replayed in "
        "docs/study.md")


def explain(selection: dict, served: str) -> str:
    """Which rule served ``served`` and why, in one line (``selection``: ``choose``'s record)."""
    cand, best = selection["candidates"], selection["best"]
    rows = selection.get("rows", {"kind": "validation"})
    on = f"{rows['n']} {rows['kind']} rows" if "n" in rows else f"{rows['kind']} rows"
    fb = selection.get("fallback")
    if fb and served == fb["to"]:
        return (f"{served} serves: {fb['from']} was chosen on {on}, but even at tau 0 it may give away more than "
                f"the tolerance against always calling the best single target (the operating point's fallback)")
    if served == "best_single" and "task_prior" in cand:
        why = (f"each target's training mean (the singles' front) scored at least as well as every router, the task "
               f"prior included, on {on}: routing does not pay on this pool")
    elif served in PRIORS:
        why = f"the prior scored at least as well as every learned router on {on}"
    elif served == best:
        why = f"it scored best on {on}"
    else:
        c, b = cand[served], cand[best]
        ties = sum(1 for k, v in cand.items() if v.get("within_noise") and v.get("servable", True) and k not in PRIORS)
        why = (f"it is the simplest of {ties} candidates within one standard error of {best} on {on} "
               f"({c['val_p_auccc']:.4f} against {b['val_p_auccc']:.4f}, standard error {c['se']:.4f})")
    return f"{served} serves: {why}; rule: {RULE}"


def operating_point(proba: np.ndarray, scores: np.ndarray, costs: np.ndarray, best_single: int,
                    tolerance: float, guard_z: float | None = None, rows: dict[str, int] | None = None) -> dict:
    """The study's earlier rule (``train.operating_rule: expected``): the largest tau (the cheapest
    routes) at which the router's own *expected* accuracy on these rows, the mean of its
    probability for the target each row is sent to, is at most ``tolerance`` below the expected
    accuracy of always calling the best single target (the same probabilities, row by row); placed
    halfway to the next gap where a route would change. ``rows``: what the rows are, for the record
    ({"validation": n} where None).

    The probabilities carry no label noise, but they are optimistic exactly where they decide a
    route (the winner's curse of an argmax over noisy probabilities): on two pools of a few hundred
    training queries this rule promised iso-accuracy and lost about 4 points on test (issue 47).

    The guard (``guard_z``, None = none) stops the walk before the first tau at which the *measured*
    accuracy is significantly worse than tolerance allows: the per-row difference d =
    correct(routed) - correct(best single) has mean(d) + guard_z * SE(d) < -tolerance.
    ``unguarded`` records where the expected rule alone would have stopped."""
    n = len(scores)
    idx = np.arange(n)
    ref_acc, ref_cost = float(scores[:, best_single].mean()), float(costs[:, best_single].mean())
    ref_exp = float(proba[:, best_single].mean())
    ref_row = scores[:, best_single].astype(float)
    gaps = np.unique(np.round(proba.max(axis=1, keepdims=True) - proba, 12))
    points, stop, guard_tau = [], len(gaps), None  # per tau: (tau, expected, accuracy, cost, se of d)
    for j, tau in enumerate(gaps):
        r = threshold_routes(proba, costs, float(tau))
        expected = float(proba[idx, r].mean())
        if points and expected < ref_exp - tolerance - 1e-12:
            stop = j
            break
        got = scores[idx, r]
        d = got - ref_row
        se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
        if points and guard_z is not None and guard_tau is None and d.mean() + guard_z * se < -tolerance - 1e-12:
            guard_tau = j  # the first tau the measured accuracy rules out
        points.append((float(tau), expected, float(got.mean()), float(costs[idx, r].mean()), se))

    def placed(last: int, nxt: int) -> dict:
        tau, expected, acc, cost, se = points[last]
        return dict(_point(tau, float(gaps[nxt]) if nxt < len(gaps) else None, acc, cost, se, ref_acc, ref_cost),
                    expected_accuracy=expected)

    unguarded = placed(len(points) - 1, stop)
    chosen = unguarded if guard_tau is None else placed(guard_tau - 1, guard_tau)
    return {"policy": "threshold", "rule": "expected accuracy within tolerance of the best single"
            + ("" if guard_z is None else ", measured accuracy not significantly below it"),
            "operating_rule": "expected", "tolerance": float(tolerance), "guard_z": guard_z,
            "guarded": guard_tau is not None, **chosen, **uncertainty(proba, scores, costs, best_single, chosen["tau"]),
            "best_single_expected_accuracy": ref_exp,
            "best_single_accuracy": ref_acc, "best_single_mean_cost": ref_cost,
            "rows": rows or {"validation": int(n)}, "unguarded": unguarded}


def _point(tau: float, next_tau: float | None, acc: float, cost: float, se: float, ref_acc: float,
           ref_cost: float) -> dict:
    """One operating point's record; tau placed halfway to ``next_tau`` (the next gap where a route
    would change; None = none), except at tau 0 (each query to its most probable target)."""
    if next_tau is not None and tau > 0:
        tau = (tau + next_tau) / 2
    return {"tau": float(min(tau, 1.0)), "accuracy": acc, "mean_cost": cost,
            "saving_pct": M.saving_pct(cost, ref_cost), "accuracy_change": acc - ref_acc, "accuracy_change_se": se}


def uncertainty(proba: np.ndarray, scores: np.ndarray, costs: np.ndarray, best_single: int, tau: float) -> dict:
    """How sure the rows are of the point at ``tau``: the per-row standard deviation of d =
    score(routed) - score(best single) (``accuracy_change_sd``, for a batch's interval:
    ``change_interval``), the 95% interval of the mean change, and of the saving against always
    calling the best single (the ratio of mean costs, by the delta method: per row
    routed cost - ratio x the best single's cost)."""
    n, idx = len(scores), np.arange(len(scores))
    r = threshold_routes(proba, costs, tau)
    d = scores[idx, r] - scores[:, best_single]
    paid, ref = costs[idx, r], costs[:, best_single]
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    se = sd / np.sqrt(n) if n else 0.0
    ratio = float(paid.mean() / ref.mean()) if ref.mean() > 0 else 1.0
    se_ratio = float((paid - ratio * ref).std(ddof=1) / np.sqrt(n) / ref.mean()) if n > 1 and ref.mean() > 0 else 0.0
    return {"accuracy_change_sd": sd,
            "accuracy_change_interval": [float(d.mean() - Z95 * se), float(d.mean() + Z95 * se)],
            "saving_interval_pct": [100.0 * (1 - ratio - Z95 * se_ratio), 100.0 * (1 - ratio + Z95 * se_ratio)]}


def measured_walk(proba: np.ndarray, scores: np.ndarray, costs: np.ndarray, best_single: int) -> dict[str, np.ndarray]:
    """The threshold policy at every distinct tau where a route changes, measured on these rows:
    ``tau``, ``accuracy``, ``mean_cost`` and the per-row difference d = score(routed) - score(best
    single) as its mean (``change``) and standard error (``se``), each (m,) in tau order.

    One pass over the policy's events (metrics.threshold_events, at most K per row): each event moves
    one row's d, so sums of d and d^2 are cumulative sums, O(nK log nK) in all, where a walk
    recomputing every row's route at each tau is O(n^2 K^2)."""
    tau, q, d_score, d_cost = M.threshold_events(proba, scores, costs)
    n = len(scores)
    ref = scores[:, best_single].astype(float)
    # Each event's row score after it: the running sum of that row's changes (events are in tau order).
    by_row = np.lexsort((np.arange(len(q)), q))
    run = np.cumsum(d_score[by_row])
    first_of_row = np.r_[True, q[by_row][1:] != q[by_row][:-1]]
    start = np.maximum.accumulate(np.where(first_of_row, np.arange(len(q)), 0))
    after = np.empty(len(q))
    after[by_row] = run - np.r_[0.0, run][start]
    first = np.zeros(len(q), bool)
    first[by_row[first_of_row]] = True  # a row's first event gives it its route (at tau 0): d from nothing
    d_after = after - ref[q]
    d_before = np.where(first, 0.0, after - d_score - ref[q])
    s1, s2 = np.cumsum(d_after - d_before), np.cumsum(d_after ** 2 - d_before ** 2)
    last = np.r_[tau[1:] != tau[:-1], True]  # the state once every event of one tau is in
    change = s1[last] / n
    var = np.maximum(s2[last] / n - change ** 2, 0.0)
    return {"tau": tau[last], "change": change, "se": np.sqrt(var / max(n - 1, 1)),
            "accuracy": float(ref.mean()) + change, "mean_cost": np.cumsum(d_cost)[last] / n}


def operating_point_measured(proba: np.ndarray, scores: np.ndarray, costs: np.ndarray, best_single: int,
                             tolerance: float, guard_z: float | None, rows: dict[str, int],
                             batch: int | None = None) -> dict:
    """The threshold policy's tau at which ``route`` runs by default (``train.operating_rule:
    measured``), chosen on *measured* outcomes: the routed accuracy on these rows, row by row
    against always calling the best single target (d = score(routed) - score(best single)), never
    the router's own expected accuracy, which is optimistic where it decides a route.

    The rows are every held-out row there is (``rows`` says which: the out-of-fold training rows the
    served router was chosen on, plus validation), each predicted by a fit that did not see it, so
    the standard error of d is several times smaller than on validation alone.

    The walk goes up from tau 0 (each query to its most probable target) and stops before the first
    tau whose one-sided bound mean(d) - guard_z * SE(d) falls below -``tolerance``: the cheapest point
    at which the rows say, at that confidence, that the router gives away at most ``tolerance``
    (guard_z None = 0: the point estimate alone). ``unguarded`` records where the point estimate
    alone would have stopped.

    ``batch`` (train.promise_batch) makes the promise one for a batch of that many queries, not for
    the mean: a batch's own change scatters around the mean by SD(d)/sqrt(batch), so the bound is
    mean(d) - guard_z * sqrt(SE(d)^2 + SD(d)^2 / batch) (routing.change_interval's width). None: the
    mean's bound alone.

    Where no tau above 0 passes, the rows are too few (or the router too weak) to promise a saving
    within the tolerance, and ``fallback`` says which careful point is left: "tau 0" (each query to
    its most probable target) where its own bound holds (``promise_kept``), else "best single": even
    tau 0 may give away more than the tolerance, and train serves the best single target instead
    (``choose_serving``). The record carries the 95% intervals of the change and the saving
    (``uncertainty``)."""
    w = measured_walk(proba, scores, costs, best_single)
    z = 0.0 if guard_z is None else float(guard_z)
    ref_acc, ref_cost = float(scores[:, best_single].mean()), float(costs[:, best_single].mean())

    def end(ok: np.ndarray) -> int:  # the last point of the walk before the first one ruled out
        bad = np.flatnonzero(~ok[1:])
        return int(bad[0]) if len(bad) else len(ok) - 1

    def placed(j: int) -> dict:
        nxt = float(w["tau"][j + 1]) if j + 1 < len(w["tau"]) else None
        return _point(float(w["tau"][j]), nxt, float(w["accuracy"][j]), float(w["mean_cost"][j]),
                      float(w["se"][j]), ref_acc, ref_cost)

    floor = -tolerance - 1e-12
    n = len(scores)
    widen = 1.0 if batch is None else float(np.sqrt(1.0 + n / max(int(batch), 1)))  # SE^2 + SD^2/batch, SD^2 = n SE^2
    ok = w["change"] - z * widen * w["se"] >= floor
    j_bound, j_point = end(ok), end(w["change"] >= floor)
    chosen, kept = placed(j_bound), bool(ok[j_bound])
    # Too few rows (or too weak a router) to promise any saving: the careful points, said in one line.
    fallback = None if j_bound > 0 else ("tau 0" if kept else "best single")
    return {"policy": "threshold", "operating_rule": "measured",
            "rule": "the cheapest tau before the first whose measured accuracy, against always calling the best "
                    f"single on {sum(rows.values())} held-out rows, may be more than the tolerance below it "
                    f"(one-sided bound, z {z:g})",
            "tolerance": float(tolerance), "guard_z": guard_z, "promise_batch": batch, "guarded": j_bound < j_point, **chosen,
            **uncertainty(proba, scores, costs, best_single, chosen["tau"]),
            "promise_kept": kept, "fallback": fallback,
            "best_single_accuracy": ref_acc, "best_single_mean_cost": ref_cost, "rows": dict(rows),
            "unguarded": placed(j_point)}


def point_for(name: str, held: HeldOut | None, p_va: np.ndarray, s_va: np.ndarray, c_va: np.ndarray,
              best_single: int, rule: OperatingRule) -> dict:
    """Router ``name``'s operating point by ``rule``. ``p_va``: its probabilities
    on the validation rows (``s_va``, ``c_va``) from the router fitted on all of train; ``held``: the
    rows the served router was chosen on, with ``name``'s probabilities there where it was a candidate.

    measured: on the out-of-fold training rows plus validation (each predicted by a fit that did not
    see it), or on validation alone where it was chosen there (``held``'s cross-validated
    probabilities of a blend, fitted on the other parts). expected: on validation, as before."""
    if rule.rule == "expected" or held is None or name not in held.proba:
        p, s, c, rows = p_va, s_va, c_va, {"validation": len(s_va)}
    elif held.kind == "validation":
        p, s, c, rows = held.proba[name], held.scores, held.costs, {"validation": len(held.scores)}
    else:
        p, s, c = np.r_[held.proba[name], p_va], np.r_[held.scores, s_va], np.r_[held.costs, c_va]
        rows = {"out_of_fold": len(held.scores), "validation": len(s_va)}
    return point_on(p, s, c, best_single, rows, rule)


def point_on(proba: np.ndarray, scores: np.ndarray, costs: np.ndarray, best_single: int, rows: dict[str, int],
             rule: OperatingRule) -> dict:
    """The operating point by ``rule`` on these rows (``rows``: what they are)."""
    if rule.rule == "measured":
        return operating_point_measured(proba, scores, costs, best_single, rule.tolerance, rule.guard_z, rows,
                                        rule.batch)
    if rule.rule == "expected":
        return operating_point(proba, scores, costs, best_single, rule.tolerance, rule.guard_z, rows)
    raise ValueError(f"train.operating_rule: {rule.rule!r} is neither measured nor expected")


def does_not_pay_line(selection: dict, served: str, best_single: str, tau: float = 0.0) -> str | None:
    """Where each target's training mean serves beside a task prior (routing does not pay on this pool:
    ``choose``), the one line train prints; None elsewhere."""
    if served != "best_single" or "task_prior" not in selection.get("candidates", {}) or selection.get("fallback"):
        return None
    return (f"routing does not pay on this pool: always call {best_single}"
            + (f" (or the cheapest target within {tau:.4f} of its training accuracy)" if tau > 0 else "")
            + "; route encodes nothing")


def operating_line(op: dict, best_single: str) -> str:
    """``op`` (an operating point's record) in one line: where, the accuracy change against always
    calling ``best_single`` and the saving, each with its 95% interval, on which rows, and where the
    promise is for a batch (train.promise_batch), the interval such a batch will show."""
    on = rows_phrase(op["rows"])
    lo, hi = (100 * v for v in op["accuracy_change_interval"])
    slo, shi = op["saving_interval_pct"]
    line = (f"tau {op['tau']:.4f} ({op['operating_rule']} rule): {100 * op['accuracy_change']:+.2f} points against "
            f"always calling {best_single} (95% interval {lo:+.2f} to {hi:+.2f}), {op['saving_pct']:.1f}% cheaper "
            f"(95% interval {slo:.1f}% to {shi:.1f}%), from {on} rows")
    if op.get("promise_batch"):
        blo, bhi = (100 * v for v in change_interval(op, op["promise_batch"]))
        line += f"; a batch of {op['promise_batch']} queries: 95% interval {blo:+.2f} to {bhi:+.2f}"
    if op.get("guarded"):
        u = op["unguarded"]
        alone = "the point estimate" if op["operating_rule"] == "measured" else "the expected accuracy"
        line += (f" (guarded: {alone} alone would have routed {u['saving_pct']:.1f}% cheaper at "
                 f"{100 * u['accuracy_change']:+.2f} points)")
    return line


def fallback_line(op: dict, best_single: str, served: str) -> str | None:
    """Where the rows were too few to promise a saving within the tolerance (``op['fallback']``),
    the careful point route runs at, in one line; None elsewhere."""
    fb = op.get("fallback")
    if not fb:
        return None
    n, tol = sum(op["rows"].values()), 100 * op["tolerance"]
    batch = f" on a batch of {op['promise_batch']}" if op.get("promise_batch") else ""
    if fb == "tau 0":
        return (f"{n} held-out rows are too few to promise any saving within {tol:.1f} points of always calling "
                f"{best_single}{batch}: route runs at tau 0, each query to its most probable target")
    if served == "best_single":  # train.fallback_best_single
        return (f"on {n} held-out rows even the router's most probable targets may fall more than {tol:.1f} points "
                f"below always calling {best_single}{batch}: route serves {best_single}, always")
    return (f"on {n} held-out rows even {served}'s most probable targets may fall more than {tol:.1f} points below "
            f"always calling {best_single}{batch}; it serves at tau 0 (train.fallback_best_single would serve "
            f"{best_single} instead)")


# What route can serve (routers on prefill features, the task column optional, and the prior itself),
# simplest first; the rest are scored for the record. Blends: (name, components by router name, per target).
# Simplest = least able to route worse than the prior: a mix toward the prior (its worst case is the
# prior itself) before a router on its own, before blends with more weights fitted on validation. The
# mean of the mixes ranks with the mixes (ties go to the better validation score): ranked before them
# it gained on RouterBench and lost on RouteLLM-2 (docs/study.md 2026-12-04).
COMPLEXITY = {"best_single": 0, "task_prior": 1, "prefill_mix_mean": 2, "prefill_trunk_mix": 2, "prefill_residual_mix": 2,
              "prefill_logreg_mix": 2, "prefill_logreg": 3, "prefill_trunk_distilled": 4, "prefill_trunk": 5,
              "prefill_trunk_residual": 5, "prefill_logreg_shrunk": 6, "prefill_trunk_shrunk": 6,
              "prefill_residual_shrunk": 6, "prefill_trunk_platt": 6, "prefill_stack": 7}
BLENDS = [("prefill_trunk_mix", ("prefill_trunk", "prior"), "mix"),
          ("prefill_residual_mix", ("prefill_trunk_residual", "prior"), "mix"),
          ("prefill_logreg_mix", ("prefill_logreg", "prior"), "mix"),
          ("prefill_mix_mean", ("prefill_trunk", "prefill_logreg", "prefill_trunk_residual", "prior"), "mean"),
          ("prefill_trunk_platt", ("prefill_trunk",), True),
          ("prefill_trunk_shrunk", ("prefill_trunk", "prior"), False),
          ("prefill_residual_shrunk", ("prefill_trunk_residual", "prior"), False),
          ("prefill_logreg_shrunk", ("prefill_logreg", "prior"), False),
          ("prefill_stack", ("prefill_trunk_residual", "prefill_logreg", "prior"), False)]
# The prior is servable: the task prior, or without tasks each target's mean on train (best_single's
# probabilities). Served where no learned router scores above it on the held-out rows (choose's null).
PRIORS = ("task_prior", "best_single")
SERVABLE = {k for k in COMPLEXITY if k.startswith("prefill_")} | set(PRIORS)
# Scored on the same rows and kept with the others' probabilities (held_out), not served: route
# reads no sentence embedding.
RECORDED = ("semantic_mlp", "semantic_knn")
MIXES = {"mix": MixRouter, "mean": MixMean}  # the blend kinds that are mixes toward the prior


def prior_name(prior) -> str:
    """The served name of ``prior`` (a fitted TaskPrior): task_prior where it knows tasks, else best_single
    (each target's training mean for every query, which is what a prior without tasks predicts)."""
    return "task_prior" if getattr(prior, "tasks_", None) else "best_single"


@dataclass
class Serving:
    winner: str
    blends: dict[str, BlendRouter]  # fitted on every validation row
    selection: dict  # every candidate's cross-validated score, the winner and why
    operating_point: dict
    held_out: HeldOut | None = None  # every candidate's probabilities on the rows it was scored on


@dataclass
class OutOfFold:
    """Out-of-fold probabilities on training rows (router_core.training.cross_fit): each router
    refitted without the part a row is in, so every row is predicted by a model that did not see it."""

    proba: dict[str, np.ndarray]  # router name (and "prior") -> (n, K)
    scores: np.ndarray  # (n, K)
    costs: np.ndarray  # (n, K)
    part: np.ndarray  # (n,) the cross-fit part each row was predicted in (the refit that predicted it)
    index: np.ndarray | None = None  # (n,) each row's position among the dataset's queries


def choose_serving(routers: dict, prior, x_va, scores: np.ndarray, costs: np.ndarray, best_single: int,
                   folds: int, repeats: int, seed: int, rule: OperatingRule, l2: float = 10.0,
                   oof: OutOfFold | None = None) -> Serving:
    """Blends of the fitted ``routers`` (name -> router) with ``prior`` (the task prior, the global
    mean without tasks), every candidate scored by cross-validated P-AUCCC; the servable winner
    (``choose``) and its operating point on the validation rows ``x_va`` (RouterInputs, rows measured
    on every target) with their ``scores`` and ``costs``.

    The rows the candidates are scored and the blends fitted on: ``x_va`` itself, or with ``oof`` the
    out-of-fold training rows (several times more rows than validation; only the routers ``oof``
    holds are candidates). The operating point (``point_for``, by ``rule``): measured, on those rows
    plus validation (the blends fitted on the training rows: probabilities of rows none of their
    weights was chosen on); expected, on validation alone. ``rule.fallback_best_single``: where even
    tau 0 may break the promise (the point's fallback "best single"), serve best_single instead."""
    from .errors import ArtifactError
    from .model import logit
    from .routers import predict_any

    def z_of(p: dict[str, np.ndarray], parts) -> np.ndarray:  # (n, K, J) a blend's components' logits
        return np.stack([logit(p[k]) for k in parts], axis=2)

    pool, proba_va = dict(routers, prior=prior), {}
    for k, r in pool.items():
        if k in COMPLEXITY or k in RECORDED or k == "prior" or any(k in parts for _, parts, _ in BLENDS):
            try:
                proba_va[k] = predict_any(r, x_va)
            except ArtifactError:  # reads inputs route does not give (e.g. train.extra_inputs): not a candidate
                pass
    if oof is None:
        proba, s, c = proba_va, scores, costs
    else:
        proba, s, c = {k: v for k, v in oof.proba.items() if k in proba_va}, oof.scores, oof.costs
    base = prior_name(prior)  # the prior as a candidate of its own, under the router name train saves it by
    fixed = {k: p for k, p in proba.items() if (k in COMPLEXITY or k in RECORDED) and k not in PRIORS}
    fixed[base] = proba["prior"]
    if base != "best_single" and "best_single" in proba:  # each target's mean: the singles' front as a router
        fixed["best_single"] = proba["best_single"]
    blends = {}
    for name, parts, per_target in BLENDS:
        if all(p in proba for p in parts):
            comps = [pool[p] for p in parts]
            mix = MIXES.get(per_target)
            b = mix(name, comps) if mix else BlendRouter(name, comps, per_target, l2)
            blends[name] = (b, z_of(proba, parts))
    groups = None if oof is None else oof.part  # out-of-fold rows: scored and fitted part by part
    scored = cv_scores(fixed, blends, s, c, folds, repeats, seed, groups=groups)
    winner, info = choose({k: v for k, v in scored.items() if k in SERVABLE}, COMPLEXITY, null=(base, "best_single"))
    for k, v in scored.items():  # the others (not servable) too, for the record
        entry = info["candidates"].setdefault(k, {"val_p_auccc": v.mean, "servable": False})
        entry["per_part"] = [round(float(x), 6) for x in v.per_part]
    kind = "validation" if oof is None else "out-of-fold training"
    info["rows"] = {"kind": kind, "n": int(len(s))}
    # The part each row was scored in: its cross-fit part, else its fold of the first repeat.
    part = groups if groups is not None else np.zeros(len(s), int)
    if groups is None:
        for j, i in enumerate(parts_of(len(s), folds, 1, seed)):
            part[i] = j
    held = HeldOut(kind, {k: v.oof for k, v in scored.items()}, s, c, part, None if oof is None else oof.index)
    fitted = {k: type(b)(b.kind, b.components, b.per_target, b.l2).fit(z, s, c, groups=groups) for k, (b, z) in blends.items()}
    for k, b in fitted.items():
        b.fit_info_ = dict(b.fit_info_, val_p_auccc_cv=scored[k].mean)
    if oof is None:
        p_op = scored[winner].oof
    elif winner in fitted:
        p_op = fitted[winner].proba_of(z_of(proba_va, dict((n, p) for n, p, _ in BLENDS)[winner]))
    else:
        p_op = proba_va["prior" if winner == base else winner]
    op = point_for(winner, held, p_op, scores, costs, best_single, rule)
    if (rule.fallback_best_single and op.get("fallback") == "best single" and winner != "best_single"
            and ("best_single" in pool or base == "best_single")):
        # Even the router's most probable targets may give away more than the tolerance: always call the best single.
        info["fallback"] = {"from": winner, "to": "best_single", "from_operating_point": op}
        winner = "best_single"
        op = {k: v for k, v in op.items() if k != "unguarded"}
        op.update(tau=0.0, accuracy=op["best_single_accuracy"], mean_cost=op["best_single_mean_cost"], saving_pct=0.0,
                  accuracy_change=0.0, accuracy_change_se=0.0, accuracy_change_sd=0.0, guarded=False,
                  accuracy_change_interval=[0.0, 0.0], saving_interval_pct=[0.0, 0.0], promise_kept=True)
    return Serving(winner, fitted, info, op, held)
