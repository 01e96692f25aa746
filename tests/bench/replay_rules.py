"""Choice rules compared by regret on the study's runs (tests/bench/study_rows.py), replayed offline
from the probabilities each run kept: the candidates' on the rows the choice was made on
(MODEL/held_out.parquet) and every router's on the test rows (test_proba.parquet). Nothing is
refitted; a rule is judged on test, never chosen there.

    python -m tests.bench.replay_rules --rows docs/study-rows.jsonl [--cache DIR]   # prints the Markdown table

A rule gives each target's probabilities as a weighted mean of the candidates' (weights >= 0,
summing to 1 per target), chosen on the held-out rows alone:
- ``today``: router_core.selection.choose, the simplest within one standard error (the prior only
  where it is best);
- ``mean_se``: the equal-weight mean of every candidate within one standard error of the best;
- ``stack``: weights fitted by log loss on the held-out rows, shrunk halfway toward equal weights;
- ``per_target``: each target's column from the candidate whose column orders it best there
  (ROC-AUC against score >= 0.5, mean over the parts).
Each over four candidate sets: ``prefill`` (what route can serve), ``+sem`` (and the semantic
MLP and kNN), ``+front`` (and best_single, with every candidate also restricted to the targets on
the singles' cost-accuracy front of the held-out rows: for the rules that pick, not for the
mixtures, where one restricted member would restrict the whole mixture), and ``+sem+front``.

Regret: the best trained candidate's test P-AUCCC (prefill and semantic) minus the rule's; the
shortfall: max(best_single, task_prior, semantic_mlp, semantic_knn) on test minus the rule's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from router_core import metrics as M
from router_core.held_out import HeldOut, from_table, part_scores
from router_core.selection import COMPLEXITY, PRIORS, RECORDED, SERVABLE, Scored, choose

from .study_rows import BASELINES

RULES = ("today", "mean_se", "stack", "per_target")
SETS = ("prefill", "+sem", "+front", "+sem+front")
MASKED = -1e6  # a target off the front: enters the threshold policy only at tau = infinity (all at once,
#               every query to the cheapest target: the floor the area starts from), so it changes nothing else


def load(cache: Path, row: dict) -> tuple[HeldOut, HeldOut]:
    where = cache / row["pool"] / row["variant"] / f"seed{row['seed']}"
    index = json.loads((where / "model" / "manifest.json").read_text())
    oof, _, targets = from_table(pq.read_table(where / "model" / index["held_out"]))
    test, _, test_targets = from_table(pq.read_table(where / "test_proba.parquet"))
    if targets != test_targets:
        raise SystemExit(f"{where}: held-out targets {targets} differ from the test rows' {test_targets}")
    return oof, test


def candidate_set(oof: HeldOut, test: HeldOut, which: str) -> tuple[dict, dict]:
    """(name -> held-out probabilities, name -> test probabilities) of the candidates in set ``which``."""
    names = [k for k in oof.proba if k in SERVABLE or ("sem" in which and k in RECORDED)]
    h = {k: oof.proba[k] for k in names if k in test.proba}
    t = {k: test.proba[k] for k in h}
    if "front" in which:
        if "best_single" not in h and "best_single" in test.proba:  # the training means, on every row
            h["best_single"] = np.broadcast_to(oof.scores.mean(axis=0), oof.scores.shape).copy()
            t["best_single"] = test.proba["best_single"]
        singles = M.single_points(oof.scores, oof.costs)
        front = np.array([any(np.allclose(p, f) for f in M.pareto_front(singles)) for p in singles])
        for k in list(h):
            h[f"{k}@front"] = np.where(front, h[k], MASKED)
            t[f"{k}@front"] = np.where(front, t[k], MASKED)
    return h, t


def _scored(h: dict, oof: HeldOut) -> dict[str, Scored]:
    out = {}
    for k, p in h.items():
        per = part_scores(p, oof.scores, oof.costs, oof.part)
        out[k] = Scored(float(per.mean()), per, p)
    return out


def weights(rule: str, h: dict, oof: HeldOut) -> np.ndarray:
    """(J, K) weights over the candidates ``h`` (in its order) for each target."""
    names, K = list(h), oof.scores.shape[1]
    w = np.zeros((len(names), K))
    if rule in ("mean_se", "stack"):  # a mixture of a restricted candidate would restrict the whole mixture
        h = {k: v for k, v in h.items() if "@" not in k}
    if rule in ("today", "mean_se"):
        scored = _scored(h, oof)
        if rule == "today":
            null = next((p for p in PRIORS if p in scored), None)
            complexity = {k: COMPLEXITY.get(k.split("@")[0], 9) + ("@" in k) for k in names}
            w[names.index(choose(scored, complexity, null=null)[0])] = 1
        else:
            best = max(scored, key=lambda k: scored[k].mean)
            for k in scored:
                d = scored[best].per_part - scored[k].per_part
                if d.mean() <= (d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0):
                    w[names.index(k)] = 1
    elif rule == "stack":
        w[[names.index(k) for k in h]] = _stack(np.stack(list(h.values())), oof.scores)[:, None]
    elif rule == "per_target":
        for k in range(K):
            auc = [np.mean([M.roc_auc(h[n][i, k], oof.scores[i, k] >= 0.5) or 0.5
                            for i in (np.flatnonzero(oof.part == g) for g in np.unique(oof.part))]) for n in names]
            w[int(np.argmax(auc)), k] = 1
    return w / w.sum(axis=0, keepdims=True)


def _stack(p: np.ndarray, scores: np.ndarray, shrink: float = 0.5) -> np.ndarray:
    """Non-negative weights summing to 1 minimising the log loss of the weighted mean of ``p`` (J, n, K)
    on ``scores``, by exponentiated gradient; then shrunk toward equal weights."""
    J = len(p)
    q = np.clip(p, 1e-4, 1 - 1e-4)
    w = np.full(J, 1.0 / J)
    for _ in range(300):
        m = np.tensordot(w, q, axes=1)
        grad = -np.tensordot(q, scores / m - (1 - scores) / (1 - m), axes=([1, 2], [0, 1])) / scores.size
        w = w * np.exp(-0.5 * grad / (np.abs(grad).max() + 1e-12))
        w /= w.sum()
    return (1 - shrink) * w + shrink / J


def replay(row: dict, cache: Path) -> dict:
    oof, test = load(cache, row)
    trained = [k for k in test.proba if (k in SERVABLE or k in RECORDED) and k in oof.proba]
    best = max(M.p_auccc(test.proba[k], test.scores, test.costs) for k in trained)
    floor = max(M.p_auccc(test.proba[b], test.scores, test.costs) for b in BASELINES if b in test.proba)
    out = {}
    for which in SETS:
        h, t = candidate_set(oof, test, which)
        for rule in RULES:
            w = weights(rule, h, oof)
            p = sum(w[j][None, :] * t[k] for j, k in enumerate(h))
            got = M.p_auccc(p, test.scores, test.costs)
            out[f"{rule} {which}"] = {"p_auccc": got, "regret": best - got, "shortfall": floor - got}
    return out


def table(rows: list[dict], results: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r, res in zip(rows, results):
        groups.setdefault((r["pool"], r["variant"]), []).append(res)
    keys = [f"{rule} {s}" for s in SETS for rule in RULES]
    head = ("| rule | " + " | ".join(f"{p} {v} ({len(g)})" for (p, v), g in groups.items())
            + f" | all ({len(results)}) |")
    lines = [head, "|" + "---|" * (len(groups) + 2)]

    def cell(g: list[dict], k: str) -> str:
        reg = [x[k]["regret"] for x in g]
        return f"{np.mean(reg):.4f} / {max(reg):.4f} / {max(x[k]['shortfall'] for x in g):+.4f}"

    for k in keys:
        lines.append(f"| {k} | " + " | ".join(cell(g, k) for g in groups.values()) + f" | {cell(results, k)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "prefill-router" / "study")
    a = ap.parse_args(argv)
    rows = [json.loads(x) for x in a.rows.read_text().splitlines() if x.strip()]
    kept, results = [], []
    for r in rows:
        where = a.cache / r["pool"] / r["variant"] / f"seed{r['seed']}"
        if not (where / "test_proba.parquet").exists():
            print(f"{r['pool']} {r['variant']} seed {r['seed']}: no probabilities under {where}; skipped")
            continue
        kept.append(r)
        results.append(replay(r, a.cache))
    print("Cells: mean regret / worst regret / worst shortfall to the best baseline, over seeds.\n")
    print(table(kept, results))


if __name__ == "__main__":
    main()
