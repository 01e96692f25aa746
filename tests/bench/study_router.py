"""The router study: train + evaluate over several seeds per dataset; mean and std of every router.

    python -m tests.bench.study_router --dataset routerbench=DATA:FEATURES --dataset llmrouter=DATA:FEATURES \
        --seeds 5 --out out/study [--set train.n_trials=8 ...]

Each seed changes the Optuna sampler, the validation split (when the dataset has none), the
ensemble's seeds and the random router. The sentence embeddings are computed once per dataset
(cached under OUT/<name>/semantic_features). Writes OUT/study.json and OUT/study.md, and prints
the tables: they are the figures quoted in docs/study.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from jobs.evaluate import run_evaluate
from jobs.train import run_train
from router_core.config import load_config
from router_core.routers import ordered
from router_core.training import fit_in_process

BASELINES = ["best_single", "task_prior", "semantic_knn", "semantic_mlp"]  # what the served router must beat
METRICS = ["p_auccc", "mean_auc", "gap_closed_pct", "cost_reduction_pct", "accuracy", "mean_cost", "ece", "aiq"]


def _stats(values: list) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None]
    return (float(np.mean(v)), float(np.std(v))) if v else (None, None)


def study(datasets: dict[str, tuple[str, str]], seeds: int, out: str, overrides: list[str], config: str | None,
          in_process: bool = False, first_seed: int = 0):
    results = {}
    for name, (data, features) in datasets.items():
        runs = []
        for seed in range(first_seed, first_seed + seeds):
            cfg = load_config(config, [*overrides, f"train.seed={seed}", f"baselines.random_seed={seed}",
                                       f"baselines.semantic_features={out}/{name.removesuffix('-task-free')}/semantic_features"])
            t0 = time.perf_counter()
            tr = run_train(cfg, data, features, f"{out}/{name}/seed{seed}/model", fit_in_process if in_process else None)
            t1 = time.perf_counter()
            ev = run_evaluate(cfg, data, features, f"{out}/{name}/seed{seed}/model", f"{out}/{name}/seed{seed}/report")
            t2 = time.perf_counter()
            rep = ev.report
            serve = rep["serving"]
            boot = rep["bootstrap"]["vs"]
            rivals = [r for r in BASELINES if r in rep["routers"]]
            strongest = max(rivals, key=lambda r: rep["routers"][r]["p_auccc"])
            runs.append({"seed": seed, "train_s": t1 - t0, "evaluate_s": t2 - t1, "serving": serve,
                         "selection": tr.index.selection, "operating_point": rep.get("operating_point"),
                         "vs_strongest_baseline": dict(boot.get(strongest, {}), router=strongest),
                         "semantic_embeddings_s": tr.index.seconds["semantic_embeddings"],
                         "prefill_columns": tr.bundle.routers["prefill_trunk"][0].columns,
                         "best_params": tr.bundle.routers["prefill_trunk"][1]["best_params"],
                         "calibration": rep["calibration"], "routers": rep["routers"],
                         "best_single": rep["best_single"], "oracle": rep["oracle"], "pareto_auccc": rep["pareto_auccc"],
                         "n_test": rep["n_test"]})
            op = rep.get("operating_point") or {}
            print(f"{name} seed {seed}: train {t1 - t0:.0f} s, evaluate {t2 - t1:.0f} s; serving {serve}: P-AUCCC "
                  f"{rep['routers'][serve]['p_auccc']:.4f}, mean AUC {rep['routers'][serve]['mean_auc']:.4f}; "
                  f"strongest baseline {strongest} {rep['routers'][strongest]['p_auccc']:.4f}, difference interval "
                  f"{boot.get(strongest, {}).get('p_auccc_ci')}; default route saves {op.get('saving_pct', float('nan')):.1f}% "
                  f"at {op.get('accuracy_change_points', float('nan')):+.2f} accuracy points"
                  + (f" (without the guard: {op['without_guard']['saving_pct']:.1f}% at "
                     f"{op['without_guard']['accuracy_change_points']:+.2f})" if op.get("without_guard") else ""),
                  flush=True)
        for run in runs:  # the served router, whichever it is in that seed, as one more row
            run["routers"]["served (default)"] = run["routers"][run["serving"]]
        routers = ["served (default)"] + ordered(r for r in runs[0]["routers"] if r != "served (default)")
        summary = {r: {m: _stats([run["routers"].get(r, {}).get(m) for run in runs]) for m in METRICS} for r in routers}
        results[name] = {"data": data, "features": features, "seeds": seeds, "runs": runs, "summary": summary,
                         "n_test": runs[0]["n_test"], "best_single": runs[0]["best_single"], "oracle": runs[0]["oracle"],
                         "pareto_auccc": runs[0]["pareto_auccc"],
                         "served": {r["seed"]: r["serving"] for r in runs},
                         "default_route": {k: _stats([(r["operating_point"] or {}).get(k) for r in runs])
                                           for k in ("saving_pct", "accuracy_change_points", "tau")},
                         "without_guard": {k: _stats([_unguarded(r["operating_point"]).get(k) for r in runs])
                                           for k in ("saving_pct", "accuracy_change_points", "tau")},
                         "guarded_seeds": sum(bool((r["operating_point"] or {}).get("without_guard")) for r in runs),
                         "ci_above_zero": sum(bool(r["vs_strongest_baseline"].get("p_auccc_ci")) and
                                              r["vs_strongest_baseline"]["p_auccc_ci"][0] > 0 for r in runs),
                         "train_s_median": float(np.median([r["train_s"] for r in runs])),
                         "evaluate_s_median": float(np.median([r["evaluate_s"] for r in runs]))}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "study.json").write_text(json.dumps(results, indent=2))
    md = markdown(results)
    (Path(out) / "study.md").write_text(md)
    print(md)


def _unguarded(op: dict | None) -> dict:
    """The test figures where the expected-accuracy rule alone would have routed (the same point where
    the guard did not stop it)."""
    return (op or {}).get("without_guard") or (op or {})


def task_free_copy(data: str, out: str) -> str:
    """The dataset with its task column emptied (a task-free run), written under ``out``."""
    import pyarrow as pa

    from router_core.dataset import Dataset, load_dataset, save_dataset
    from router_core.storage import Storage

    st = Storage()
    ds = load_dataset(st, data)
    q = ds.queries
    q = q.set_column(q.column_names.index("task"), "task", pa.nulls(q.num_rows, pa.string()))
    save_dataset(st, out, Dataset(q, ds.outcomes, ds.pool, []))
    return out


def _pm(v: tuple) -> str:
    return "n/a" if v[0] is None else f"{v[0]:.4f} ± {v[1]:.4f}"


def markdown(results: dict) -> str:
    lines = []
    for name, r in results.items():
        b, o = r["best_single"], r["oracle"]
        lines += [f"### {name}: {r['n_test']} test queries, {r['seeds']} seeds",
                  f"best single {b['model']} {b['accuracy']:.4f} at ${b['mean_cost']:.6f}; oracle {o['accuracy']:.4f}; "
                  f"Pareto-AUCCC of the singles {r['pareto_auccc']:.4f}; train median {r['train_s_median']:.0f} s, "
                  f"evaluate median {r['evaluate_s_median']:.0f} s", "",
                  "| router | P-AUCCC | mean AUC | gap closed % | cost reduction % | acc @tau0 | ECE |",
                  "|---|---|---|---|---|---|---|"]
        for router, s in r["summary"].items():
            lines.append(f"| {router} | {_pm(s['p_auccc'])} | {_pm(s['mean_auc'])} | {_pm(s['gap_closed_pct'])} | "
                         f"{_pm(s['cost_reduction_pct'])} | {_pm(s['accuracy'])} | {_pm(s['ece'])} |")
        d = r["default_route"]
        lines += ["", f"Served by seed: {', '.join(f'{k}: {v}' for k, v in r['served'].items())}. Default route on "
                  f"test: saving {_pm(d['saving_pct'])} % against always the best single (train's), accuracy change "
                  f"{_pm(d['accuracy_change_points'])} points, tau {_pm(d['tau'])}; the guard stopped the walk in "
                  f"{r['guarded_seeds']} of {r['seeds']} seeds (the expected rule alone: saving "
                  f"{_pm(r['without_guard']['saving_pct'])} %, {_pm(r['without_guard']['accuracy_change_points'])} "
                  f"points). Paired bootstrap 95% interval of "
                  f"the P-AUCCC difference to the strongest baseline above 0 in {r['ci_above_zero']} of {r['seeds']} seeds.",
                  ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", action="append", required=True, help="NAME=DATA:FEATURES")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1 (to add "
                    "seeds to a run made before, e.g. the demo's seed 0)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--config")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--task-free", action="store_true", help="also run every dataset with its task column emptied")
    ap.add_argument("--in-process", action="store_true", help="fit the nets in this process (no Ray Train): "
                    "the same core and results, less start-up per fit on a small machine")
    a = ap.parse_args()
    ds = {}
    for spec in a.dataset:
        name, _, rest = spec.partition("=")
        data, _, feats = rest.partition(":")
        ds[name] = (data, feats)
        if a.task_free:
            ds[f"{name}-task-free"] = (task_free_copy(data, f"{a.out}/{name}-task-free/data"), feats)
    study(ds, a.seeds, a.out, a.overrides, a.config, a.in_process, a.first_seed)


if __name__ == "__main__":
    main()
