"""Replay train's choice of the served router on models already trained (no router is refitted).

    python -m tests.bench.replay_selection --config configs/demo.yaml \
        --models rb=DATA:FEATURES:STUDY/rb      # every STUDY/rb/seed*/model of a study_router run

For each model: its fitted routers (trunk, logreg, residual trunk, distilled trunk) and the task
prior on that seed's train rows go through ``router_core.selection.choose_serving`` as it is in this
checkout, on that seed's validation rows; then the winner and the router the model had served are
scored on the test split (P-AUCCC, and the default route's saving and accuracy change against the
best single target at the winner's operating point). So a change to the choice (candidates,
their ranking, the operating point rule) can be compared on the same trained routers, seed by
seed, in minutes instead of a new study. Test is reported, never used to choose.
"""

from __future__ import annotations

import argparse
import glob
import json
import re

import numpy as np

from jobs.common import storage_from
from router_core import metrics as M
from router_core.config import load_config
from router_core.dataset import load_dataset, outcome_matrix
from router_core.features import load_features, read_manifest
from router_core.routers import RouterInputs, TaskPrior, load_router, predict_any
from router_core.routing import threshold_routes
from router_core.selection import OperatingRule, choose_serving
from tests.bench.probe_loss import seed_split

FITTED = ["prefill_trunk", "prefill_logreg", "prefill_trunk_residual", "prefill_trunk_distilled"]


def replay(name: str, data: str, features: str, study: str, config: str | None, overrides: list[str]) -> list[dict]:
    cfg = load_config(config, overrides)
    storage = storage_from(cfg)
    ds = load_dataset(storage, data)
    fman = read_manifest(storage, features)
    fs = load_features(storage, features, ds.queries, fman["columns"])
    q = ds.queries
    qids, targets, tasks = q.column("query_id").to_pylist(), ds.pool.names, q.column("task").to_pylist()
    scores = outcome_matrix(ds.outcomes, qids, targets)
    full = fs.present & ~np.isnan(scores).any(axis=1)
    test = np.array([s == "test" for s in q.column("split").to_pylist()]) & full

    def inputs(rows: np.ndarray) -> tuple[np.ndarray, RouterInputs]:
        idx = np.flatnonzero(rows)
        return idx, RouterInputs(n=len(idx), prefill={c: v[idx] for c, v in fs.columns.items()},
                                 tasks=[tasks[i] for i in idx])

    out = []
    for model in sorted(glob.glob(f"{study}/seed*/model")):
        seed = int(re.search(r"seed(\d+)", model).group(1))
        index = json.load(open(f"{model}/manifest.json"))
        tr, va, costs, _ = seed_split(ds, scores, fs.present, seed, [*overrides, f"train.seed={seed}"])
        prior = TaskPrior().fit([tasks[i] for i in np.flatnonzero(tr)], scores[tr])
        routers = {k: load_router(storage, f"{model}/{k}")[0] for k in FITTED if k in index["routers"]}
        best_single = int(np.nanmean(scores[tr], axis=0).argmax())
        iv, xv = inputs(va & full)
        tc = cfg.train
        sv = choose_serving(routers, prior, xv, scores[iv], costs[iv], best_single, tc.cv_folds, tc.cv_repeats, seed,
                            OperatingRule.of(tc))
        it, xt = inputs(test)
        s, c = scores[it], costs[it]

        def p_of(name: str) -> np.ndarray:
            r = sv.blends.get(name) or routers.get(name) or load_router(storage, f"{model}/{name}")[0]
            return predict_any(r, xt)

        p = p_of(sv.winner)
        r = threshold_routes(p, c, sv.operating_point["tau"])
        rows = np.arange(len(it))
        row = {"pool": name, "seed": seed, "served_before": index["serve"], "served_now": sv.winner,
               "p_auccc_before": M.p_auccc(p_of(index["serve"]), s, c), "p_auccc_now": M.p_auccc(p, s, c),
               "saving_pct_now": M.saving_pct(float(c[rows, r].mean()), float(c[:, best_single].mean())),
               "accuracy_points_now": 100 * float(s[rows, r].mean() - s[:, best_single].mean())}
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        out.append(row)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", action="append", required=True, help="NAME=DATA:FEATURES:STUDY_DIR (its seed*/model)")
    ap.add_argument("--config")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    a = ap.parse_args(argv)
    rows = []
    for spec in a.models:
        name, _, rest = spec.partition("=")
        data, features, study = rest.split(":")
        rows += replay(name, data, features, study, a.config, a.overrides)
    for k in ("p_auccc_before", "p_auccc_now", "saving_pct_now", "accuracy_points_now"):
        v = [r[k] for r in rows]
        print(f"{k}: {np.mean(v):.4f} ± {np.std(v):.4f} over {len(v)} models")


if __name__ == "__main__":
    main()
