"""A lever probe: the prefill trunk's loss with and without the pairwise term (train.pairwise).

    python -m tests.bench.probe_loss --data OUT/data --features OUT/features --model OUT/model \
        --weights 0,0.3,1,3 --seeds 3

Refits the trained model's prefill_trunk setting (its columns and best_params, from MODEL; with
--design all_mean_pca200, every mean-pooled layer concatenated with a scaler and PCA-200 fitted on
train, its other settings kept) in this process, once per pairwise weight and seed (train.seeds members, train.keep kept, as train does),
and scores each on the validation and the test split: P-AUCCC and mean AUC of the trunk, and of its
mix with the task prior (the mix weight chosen on validation, as train's *_mix). Test is reported,
never used to choose. Prints a table of means and standard deviations over seeds; --out writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from jobs.common import storage_from
from router_core import metrics as M
from router_core.config import load_config
from router_core.dataset import load_dataset, outcome_matrix
from router_core.evaluation import output_token_medians
from router_core.features import load_features, read_manifest
from router_core.routers import MixRouter, RouterInputs, TaskPrior, load_router
from router_core.training import all_costs, arrays, fit_ensemble, fit_in_process, split_masks

def seed_split(ds, scores: np.ndarray, present: np.ndarray, seed: int, overrides: list[str]):
    """What train would use in seed ``seed``: its train and validation masks (rows with features),
    every (query, target) cost, and the task prior fitted on its train rows, for every query."""
    q = ds.queries
    qids, targets, tasks = q.column("query_id").to_pylist(), ds.pool.names, q.column("task").to_pylist()
    cfg = load_config(None, [*overrides, f"train.seed={seed}"])
    tr, va = split_masks(q.column("split").to_pylist(), qids, seed, cfg.train.val_frac)
    tr, va = tr & present, va & present
    med = output_token_medians(outcome_matrix(ds.outcomes, qids, targets, "output_tokens")[tr])
    prior = TaskPrior().fit([tasks[i] for i in np.flatnonzero(tr)], scores[tr]).predict_proba(
        RouterInputs(n=len(qids), tasks=tasks))
    return tr, va, all_costs(ds, qids, targets, med), prior


def _mix(p: np.ndarray, prior: np.ndarray, va: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> float:
    """The mix weight train's *_mix would choose on these validation rows (its grid, its ties)."""
    rows = va & ~np.isnan(scores).any(axis=1)
    areas = {a: M.p_auccc(a * p[rows] + (1 - a) * prior[rows], scores[rows], costs[rows]) for a in MixRouter.GRID}
    return float(max(MixRouter.GRID, key=lambda g: (round(areas[g], 12), g)))


def probe(data: str, features: str, model: str, weights: list[float], seeds: int, overrides: list[str],
          design: str = "trained") -> list[dict]:
    cfg0 = load_config(None, overrides)
    storage = storage_from(cfg0)
    ds = load_dataset(storage, data)
    fman = read_manifest(storage, features)
    fs = load_features(storage, features, ds.queries, fman["columns"])
    _, trunk = load_router(storage, f"{model}/prefill_trunk")
    best, cols = trunk["best_params"], trunk["columns"]
    if design == "all_mean_pca200":  # every layer mean-pooled, concatenated, scaler + PCA-200 on train
        cols = [c for c in fman["columns"] if c.startswith("mean_")]
        best = dict(best, pca_dim=200)
    q = ds.queries
    qids, targets = q.column("query_id").to_pylist(), ds.pool.names
    scores = outcome_matrix(ds.outcomes, qids, targets)
    splits = q.column("split").to_pylist()
    te = np.array([s == "test" for s in splits]) & fs.present
    rows_out = []
    for seed in range(seeds):
        tr, va, costs, prior = seed_split(ds, scores, fs.present, seed, overrides)
        x = np.concatenate([fs.columns[c] for c in cols], axis=1)
        _, pre, dat = arrays(lambda p: (cols, x), best, tr, va, scores)
        for w in weights:
            cfg = load_config(None, [*overrides, f"train.seed={seed}", f"train.pairwise={w}"])
            t = time.perf_counter()
            router, _ = fit_ensemble(cfg, fit_in_process, "prefill_trunk", best, cols, pre, dat, len(targets))
            p = router.predict_proba(RouterInputs(n=len(qids), prefill={c: fs.columns[c] for c in cols}))
            a = _mix(p, prior, va, scores, costs)
            row = {"seed": seed, "design": design, "pairwise": w, "seconds": time.perf_counter() - t, "mix_a": a}
            mixed = a * p + (1 - a) * prior
            for name, m in (("val", va), ("test", te)):
                full = m & ~np.isnan(scores).any(axis=1)
                row[f"{name}_p_auccc"] = M.p_auccc(p[full], scores[full], costs[full])
                row[f"{name}_mix_p_auccc"] = M.p_auccc(mixed[full], scores[full], costs[full])
                row[f"{name}_prior_p_auccc"] = M.p_auccc(prior[full], scores[full], costs[full])
                row[f"{name}_mean_auc"] = M.mean_auc(p[m], scores[m])
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            rows_out.append(row)
    return rows_out


def table(rows: list[dict]) -> str:
    keys = ["val_p_auccc", "val_mix_p_auccc", "test_p_auccc", "test_mix_p_auccc", "test_prior_p_auccc", "test_mean_auc",
            "mix_a", "seconds"]
    out = ["| pairwise | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for w in sorted({r["pairwise"] for r in rows}):
        sel = [r for r in rows if r["pairwise"] == w]
        out.append(f"| {w:g} | " + " | ".join(f"{np.mean([r[k] for r in sel]):.4f} ± {np.std([r[k] for r in sel]):.4f}"
                                          for k in keys) + " |")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--features", required=True)
    ap.add_argument("--model", required=True, help="a trained model folder: its prefill_trunk setting is refitted")
    ap.add_argument("--weights", default="0,0.3,1,3", help="pairwise weights, comma-separated")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--design", choices=["trained", "all_mean_pca200"], default="trained",
                    help="the trained setting's columns and PCA, or every mean-pooled layer + PCA-200")
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. train.seeds=5")
    ap.add_argument("--out", help="JSON of every row")
    a = ap.parse_args(argv)
    rows = probe(a.data, a.features, a.model, [float(w) for w in a.weights.split(",")], a.seeds, a.set, a.design)
    print(table(rows))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
