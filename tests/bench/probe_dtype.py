"""Do two feature folders of the same queries route alike? (e.g. bfloat16 against float32 features)

    python -m tests.bench.probe_dtype --data LR --features LR-bf16 --features LR-f32 --seeds 3

A quick router on each folder, paired by seed: per target, a logistic regression on every column
the folders share (``PrefillLogReg``, C chosen on validation as train does), and its mix with the
task prior (weight chosen on validation P-AUCCC, as train's ``*_mix``). Scores on the test split:
mean AUC and P-AUCCC of each, and the paired difference between the folders per seed. Cheaper
than a full ``study_router`` run per folder (no trunk search), for the question "did the features
change what a router can learn", not "how good is the served router". Test is reported, never used
to choose.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from jobs.common import storage_from
from router_core import metrics as M
from router_core.config import load_config
from router_core.dataset import load_dataset, outcome_matrix
from router_core.features import load_features, read_manifest
from router_core.routers import PrefillLogReg, RouterInputs
from tests.bench.probe_loss import _mix, seed_split


def scores_for(ds, fs, label: str, cols: list[str], seeds: int, overrides: list[str]) -> list[dict]:
    """Per seed, each column's per-target logistic regression and its mix, scored on the test split;
    ``fs`` the folder's features (its ``present``: the rows both folders hold)."""
    logreg_c = load_config(None, overrides).baselines.logreg_c
    q = ds.queries
    qids, targets = q.column("query_id").to_pylist(), ds.pool.names
    scores = outcome_matrix(ds.outcomes, qids, targets)
    te = np.array([s == "test" for s in q.column("split").to_pylist()]) & fs.present
    full_te = te & ~np.isnan(scores).any(axis=1)
    out = []
    for seed in range(seeds):
        tr, va, costs, prior = seed_split(ds, scores, fs.present, seed, overrides)
        row = {"seed": seed, "features": label, "rows": int(fs.present.sum()), "test_rows": int(full_te.sum())}
        for col in cols:
            lr = PrefillLogReg(logreg_c).fit([col] * len(targets), {col: fs.columns[col][tr]}, scores[tr],
                                             {col: fs.columns[col][va]}, scores[va])
            p = lr.predict_proba(RouterInputs(n=len(qids), prefill={col: fs.columns[col]}))
            a = _mix(p, prior, va, scores, costs)
            mixed = a * p + (1 - a) * prior
            row[col] = {"mean_auc": M.mean_auc(p[te], scores[te]),
                        "p_auccc": M.p_auccc(p[full_te], scores[full_te], costs[full_te]),
                        "mix_p_auccc": M.p_auccc(mixed[full_te], scores[full_te], costs[full_te]), "mix_a": a}
        out.append(row)
        print(json.dumps(row, default=lambda v: round(v, 4)), flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--features", action="append", required=True, help="two feature folders of the same queries")
    ap.add_argument("--columns", help="comma-separated columns (default: every column of the first folder)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], help="config override, e.g. train.val_frac=0.2")
    a = ap.parse_args(argv)
    if len(a.features) != 2:
        ap.error("give --features twice: the two folders to compare")
    cols = a.columns.split(",") if a.columns else None
    storage = storage_from(load_config(None, a.set))
    ds = load_dataset(storage, a.data)
    cols = cols or read_manifest(storage, a.features[0])["columns"]
    sets = [load_features(storage, f, ds.queries, cols) for f in a.features]
    both = sets[0].present & sets[1].present  # a partly extracted folder is compared on its rows
    for fs in sets:
        fs.present = both
    runs = [scores_for(ds, fs, f, cols, a.seeds, a.set) for f, fs in zip(a.features, sets)]
    print(f"\n{runs[0][0]['rows']} queries with features in both folders ({runs[0][0]['test_rows']} test rows "
          "measured on every target)")
    print(f"{a.features[0]} minus {a.features[1]}, paired by seed (mean ± std over {a.seeds} seeds; "
          "each folder's own means after the slash):")
    print("| column | mean AUC | P-AUCCC | P-AUCCC, mixed with the task prior |")
    print("|---|---|---|---|")
    for c in cols:
        cells = []
        for m in ("mean_auc", "p_auccc", "mix_p_auccc"):
            x = np.array([r[c][m] for r in runs[0]])
            y = np.array([r[c][m] for r in runs[1]])
            d = x - y
            cells.append(f"{d.mean():+.4f} ± {d.std():.4f} / {x.mean():.4f} vs {y.mean():.4f}")
        print(f"| {c} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
