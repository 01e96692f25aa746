"""Operating-point rules replayed on one trained model, without a refit: each rule chooses tau on the
rows it is given (validation, or the out-of-fold training rows the model kept plus validation), and
is judged on the test split, never chosen there.

    python -m tests.bench.replay_oppoint --data out/demo/dataset --features out/demo/features \\
        --model out/demo/model [--rows out/oppoint-rows.jsonl]

Rules (router_core.selection): ``expected`` (the router's own expected accuracy on validation,
guarded there: train.operating_rule expected), and ``measured`` at several guard z, on validation
alone and on every held-out row. Per rule: tau, the saving and accuracy change promised on the rows
it was chosen on (with the standard error), the same on test, whether the promise was kept (test
accuracy at most ``--tolerance`` below always calling the best single) and whether the 95% interval
for a batch of the test's size (routing.change_interval) held the test change. One JSON row per
rule, appended to ``--rows`` if given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from router_core.dataset import load_dataset, outcome_matrix
from router_core.evaluation import at_operating_point
from router_core.held_out import from_table
from router_core.lengths import OutputLengths
from router_core.model_index import read_index
from router_core.onboard import served_proba
from router_core.routing import change_interval
from router_core.selection import OperatingRule, point_on
from router_core.storage import Storage, join
from router_core.training import all_costs, split_masks

GUARDS = (None, 1.0, 1.645, 2.326)


def recorded(data: str, features: str, model: str) -> dict[str, np.ndarray]:
    """What every rule is replayed on, for the model in folder ``model``: its served router's
    probabilities, the scores and the costs on validation (``p_va``, ``s_va``, ``c_va``) and test
    (``p_te``, ...), and on the out-of-fold training rows it was chosen on (``p_oof``, ...; absent
    where it was chosen on validation), with ``best`` (the best single's column). Computed once and
    kept beside the model (``replay.npz``, plain arrays: loaded with allow_pickle False), so that a
    new rule is replayed over every run in seconds."""
    keep = Path(model).parent / "replay.npz"
    if keep.exists():
        with np.load(keep, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    st = Storage()
    index = read_index(st, model)
    ds = load_dataset(st, data)
    q = ds.queries
    qids, targets = q.column("query_id").to_pylist(), index.targets
    splits = np.array(q.column("split").to_pylist(), dtype=object)
    tc = index.config["train"]
    _, va = split_masks(q.column("split").to_pylist(), qids, tc["seed"], tc["val_frac"])
    splits[va] = "val"  # train's own validation rows (a val split, or cut from train)
    tasks = q.column("task").to_pylist()
    has_tasks = any(t is not None for t in tasks)
    scores = outcome_matrix(ds.outcomes, qids, targets)
    lengths = OutputLengths.of_index(index)
    costs = all_costs(ds, qids, targets, lengths.expected(tasks if has_tasks else None, len(qids)))
    serve = index.serve
    out = {"best": np.array(targets.index(index.best_single))}
    for name, short in (("val", "va"), ("test", "te")):
        rows = np.flatnonzero((splits == name) & ~np.isnan(scores).any(axis=1))
        p, have, _ = served_proba(st, model, index, serve, ds, features, rows)
        out.update({f"p_{short}": p[have], f"s_{short}": scores[rows[have]], f"c_{short}": costs[rows[have]]})
    if index.held_out:
        held, _, held_targets = from_table(st.read_table(join(model, index.held_out)))
        if held_targets != targets:
            raise SystemExit(f"{model}: held_out targets differ from the index's")
        if serve in held.proba:
            out.update({"p_oof" if held.kind == "out-of-fold training" else "p_cv": held.proba[serve],
                        "s_held": held.scores, "c_held": held.costs})
    np.savez(keep, **out)
    return out


def rows_for(rec: dict[str, np.ndarray], on: str) -> tuple:
    """The rows a rule chooses on (point_for's): "val", or "oof+val" (validation alone where the served
    router was chosen there: its cross-validated probabilities)."""
    if on == "val" or ("p_oof" not in rec and "p_cv" not in rec):
        return rec["p_va"], rec["s_va"], rec["c_va"], {"validation": len(rec["s_va"])}
    if "p_cv" in rec:
        return rec["p_cv"], rec["s_held"], rec["c_held"], {"validation": len(rec["s_held"])}
    return (np.r_[rec["p_oof"], rec["p_va"]], np.r_[rec["s_held"], rec["s_va"]], np.r_[rec["c_held"], rec["c_va"]],
            {"out_of_fold": len(rec["s_held"]), "validation": len(rec["s_va"])})


def judged(rec: dict[str, np.ndarray], op: dict, tolerance: float) -> dict:
    """Operating point ``op`` judged on the test split: the test figures, whether the promise was kept
    and whether the batch interval (routing.change_interval, at the test's size) held them."""
    best = int(rec["best"])
    test = at_operating_point(rec["p_te"], rec["s_te"], rec["c_te"], op, best)
    lo, hi = (100 * v for v in change_interval(op, len(rec["s_te"])))
    return {"rows": op["rows"], "tau": op["tau"], "fallback": op.get("fallback"),
            "promised_change_points": 100 * op["accuracy_change"],
            "promised_se_points": 100 * op["accuracy_change_se"], "batch_interval_points": [lo, hi],
            "promised_saving_pct": op["saving_pct"], "test_change_points": test["accuracy_change_points"],
            "test_saving_pct": test["saving_pct"], "n_test": len(rec["s_te"]),
            "kept": bool(test["accuracy_change_points"] >= -100 * tolerance - 1e-9),
            "interval_held": bool(lo - 1e-9 <= test["accuracy_change_points"] <= hi + 1e-9)}


def replay(data: str, features: str, model: str, tolerance: float = 0.005) -> list[dict]:
    """One row per rule (see the module's docstring) on the model in folder ``model``."""
    rec = recorded(data, features, model)
    serve = read_index(Storage(), model).serve
    rules = [("expected", "val", 1.645)] + [("measured", "val", z) for z in GUARDS]
    if "p_oof" in rec:
        rules += [("measured", "oof+val", z) for z in GUARDS]
    out = []
    for rule, on, z in rules:
        p, s, c, rows = rows_for(rec, on)
        op = point_on(p, s, c, int(rec["best"]), rows, OperatingRule(rule, tolerance, z))
        out.append({"served": serve, "rule": rule, "guard_z": z, **judged(rec, op, tolerance)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the model's dataset folder")
    ap.add_argument("--features", required=True, help="its prefill feature cache")
    ap.add_argument("--model", required=True, help="the model folder (with held_out.parquet)")
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--label", default="", help="a name for these rows (pool, variant, seed)")
    ap.add_argument("--rows", help="append one JSON row per rule here")
    a = ap.parse_args(argv)
    out = [dict(r, label=a.label) for r in replay(a.data, a.features, a.model, a.tolerance)]
    for r in out:
        on = "+".join(f"{v} {k}" for k, v in r["rows"].items())
        z = r["guard_z"] if r["guard_z"] is not None else "-"
        print(f"{r['rule']:9s} z {z:>5} on {on:>28s}: tau {r['tau']:.4f}, promised {r['promised_change_points']:+.2f} "
              f"(batch interval {r['batch_interval_points'][0]:+.2f} to {r['batch_interval_points'][1]:+.2f}) at "
              f"{r['promised_saving_pct']:5.1f}% saving; test {r['test_change_points']:+.2f} pts at "
              f"{r['test_saving_pct']:5.1f}%{'' if r['kept'] else '  PROMISE BROKEN'}"
              f"{'' if r['interval_held'] else '  OUTSIDE INTERVAL'}")
    if a.rows:
        with open(a.rows, "a") as f:
            for row in out:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
