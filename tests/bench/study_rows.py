"""The study of choice rules, sized to a session's clock: one row per (pool, variant, seed),
appended to a JSON-lines file as each run ends. Rows already in the file are skipped, so the study
fills over several sessions, each giving it at most ``--budget-min`` minutes.

    nohup .venv/bin/python -m tests.bench.study_rows --rows docs/study-rows.jsonl --budget-min 30 \\
        > out/study.log 2>&1 &

Pools: ``rb`` (RouterBench, the compact copy shipped in examples/routerbench), ``lr`` (LLMRouter-9)
and ``rl`` (RouteLLM-2), the last two from ../shared/data (PREFILL_ROUTER_DATA names another
folder). Variants:
- ``base``: the pool as imported;
- ``graded``: each outcome replaced by a smoothed score in [0, 1],
  ``0.75 * score + 0.25 * mean``, the mean being that target's on the training queries of the same
  task (of every training query where there are no tasks);
- ``n600``: the training split cut to 600 queries at random (seed 600); validation and test kept.
Seeds 0-2 by default, run seed by seed so that the first session gives every pool and variant.

Each pool is imported and its prefill features extracted once, with the demo's settings
(configs/demo.yaml), under ``--cache`` (default ~/.cache/prefill-router/study: a later session on
the same machine reuses them); the runs train in this process (``train.in_process``). Each run
keeps its model (with MODEL/held_out.parquet) and the test rows' probabilities of every router
(test_proba.parquet, the same layout) under the cache, for choice rules to be replayed on; the rows
are what a session commits.

A row: pool, variant, seed, the commit, the served router, the rows it was chosen on, every
candidate's cross-validated score there (and whether it can serve), every router's test P-AUCCC
and mean AUC, the regret (the best servable candidate's test P-AUCCC minus the served one's; and
``regret_all``, the semantic candidates included), the default route on test, and the seconds each
stage took.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
POOLS = {"rb": ("routerbench", "examples/routerbench/routerbench_compact.csv.gz"),
         "lr": ("llmrouter", "llmrouter-9/scores_wide.csv"),
         "rl": ("routellm", "routellm-2/mmlu_gsm8k_wide.csv")}
VARIANTS = ("base", "graded", "n600")
BASELINES = ("best_single", "task_prior", "semantic_mlp", "semantic_knn")
GRADE_WEIGHT, N_SMALL, SMALL_SEED = 0.25, 600, 600


def source_of(pool: str) -> str:
    rel = POOLS[pool][1]
    if rel.startswith("examples/"):
        return str(REPO / rel)
    root = Path(os.environ.get("PREFILL_ROUTER_DATA", REPO.parent / "shared" / "data"))
    path = root / rel
    if not path.is_file():
        raise SystemExit(f"study_rows: {path} not found (set PREFILL_ROUTER_DATA to the folder that holds {rel})")
    return str(path)


def graded(ds):
    """The dataset with each outcome's score smoothed toward its target's training mean in its task."""
    import pyarrow as pa

    from router_core.dataset import Dataset

    q, o = ds.queries, ds.outcomes
    task = dict(zip(q.column("query_id").to_pylist(), q.column("task").to_pylist()))
    train = {qid for qid, s in zip(q.column("query_id").to_pylist(), q.column("split").to_pylist()) if s == "train"}
    qids, models, scores = (o.column(c).to_pylist() for c in ("query_id", "model", "score"))
    sums: dict = {}
    for qid, m, s in zip(qids, models, scores):
        if qid in train:
            for key in ((task[qid], m), (None, m)):
                a = sums.setdefault(key, [0.0, 0])
                a[0] += s
                a[1] += 1

    def mean(qid, m):
        a = sums.get((task[qid], m)) or sums.get((None, m)) or [0.5, 1]
        return a[0] / a[1]

    new = [(1 - GRADE_WEIGHT) * s + GRADE_WEIGHT * mean(qid, m) for qid, m, s in zip(qids, models, scores)]
    o = o.set_column(o.column_names.index("score"), "score", pa.array(new, pa.float64()))
    return Dataset(q, o, ds.pool)


def small(ds):
    """The dataset with its training split cut to N_SMALL queries at random (seed SMALL_SEED)."""
    import pyarrow as pa

    from router_core.dataset import Dataset

    q = ds.queries
    split = q.column("split").to_pylist()
    train = np.flatnonzero(np.array([s == "train" for s in split]))
    keep = set(np.random.default_rng(SMALL_SEED).permutation(train)[:N_SMALL].tolist())
    mask = [s != "train" or i in keep for i, s in enumerate(split)]
    q = q.filter(pa.array(mask))
    ids = set(q.column("query_id").to_pylist())
    o = ds.outcomes.filter(pa.array([x in ids for x in ds.outcomes.column("query_id").to_pylist()]))
    return Dataset(q, o, ds.pool)


def prepare(pool: str, cache: Path) -> tuple[dict[str, str], str]:
    """(variant -> dataset folder, features folder) of ``pool``, made once under ``cache``."""
    from jobs.cli import main as cli
    from router_core.dataset import load_dataset, save_dataset
    from router_core.storage import Storage

    root = cache / pool
    base, feats = root / "data" / "base", root / "features"
    fmt, _ = POOLS[pool]
    if not (base / "queries.parquet").exists():
        print(f"{pool}: importing {source_of(pool)}", flush=True)
        if cli(["import", fmt, source_of(pool), "--out", str(base)]) != 0:
            raise SystemExit(f"study_rows: import of {pool} failed")
    manifest = json.loads((feats / "manifest.json").read_text()) if (feats / "manifest.json").exists() else {}
    if not manifest.get("complete") or not manifest.get("rows"):  # none, or an interrupted one: extract resumes it
        print(f"{pool}: extracting features (once)", flush=True)
        if cli(["extract", "--config", str(REPO / "configs/demo.yaml"), "--data", str(base), "--out", str(feats)]) != 0:
            raise SystemExit(f"study_rows: extraction of {pool} failed")
    out = {"base": str(base)}
    for name, make in (("graded", graded), ("n600", small)):
        folder = root / "data" / name
        if not (folder / "queries.parquet").exists():
            save_dataset(Storage(), str(folder), make(load_dataset(Storage(), str(base))))
        out[name] = str(folder)
    return out, str(feats)


def run_one(pool: str, variant: str, seed: int, data: str, feats: str, cache: Path, overrides: list[str]) -> dict:
    from jobs.evaluate import run_evaluate
    from jobs.runtime import code_version
    from jobs.train import run_train
    from router_core.config import load_config
    from router_core.held_out import to_table
    from router_core.storage import Storage
    from router_core.training import fit_in_process

    where = cache / pool / variant / f"seed{seed}"
    cfg = load_config(str(REPO / "configs/demo.yaml"),
                      [f"train.seed={seed}", f"baselines.random_seed={seed}", "train.in_process=true",
                       f"baselines.semantic_features={cache / pool / 'semantic_features'}", *overrides])
    t0 = time.perf_counter()
    tr = run_train(cfg, data, feats, str(where / "model"), fit_in_process)
    t1 = time.perf_counter()
    ev = run_evaluate(cfg, data, feats, str(where / "model"), str(where / "report"))
    t2 = time.perf_counter()
    rep, sel = ev.report, tr.index.selection
    qids = load_query_ids(data)
    Storage().write_table(to_table(ev.test, [qids[i] for i in ev.test.index], ev.test_targets),
                          str(where / "test_proba.parquet"))
    test = {k: {"p_auccc": v["p_auccc"], "mean_auc": v.get("mean_auc")} for k, v in rep["routers"].items()}
    cands = {k: {"cv": v["val_p_auccc"], "servable": v.get("servable", True)} for k, v in sel["candidates"].items()}
    served = rep["serving"]
    best = max((k for k in cands if k in test and cands[k]["servable"]), key=lambda k: test[k]["p_auccc"])
    best_all = max((k for k in cands if k in test), key=lambda k: test[k]["p_auccc"])
    base = [b for b in BASELINES if b in test]
    op = rep.get("operating_point") or {}
    return {"pool": pool, "variant": variant, "seed": seed, "commit": code_version(), "served": served,
            "chosen_on": sel.get("rows"), "candidates": cands, "test": test,
            "best_candidate": best, "regret": test[best]["p_auccc"] - test[served]["p_auccc"],
            "best_candidate_all": best_all, "regret_all": test[best_all]["p_auccc"] - test[served]["p_auccc"],
            "vs_best_baseline": test[served]["p_auccc"] - max(test[b]["p_auccc"] for b in base),
            "default_route": {k: op.get(k) for k in ("saving_pct", "accuracy_change_points", "tau")},
            "n_test": rep.get("n_test"), "train_s": round(t1 - t0, 1), "evaluate_s": round(t2 - t1, 1)}


def load_query_ids(data: str) -> list[str]:
    from router_core.dataset import load_dataset
    from router_core.storage import Storage

    return load_dataset(Storage(), data).queries.column("query_id").to_pylist()


def done_keys(rows: Path, fields: tuple[str, ...] = ("pool", "variant", "seed"), who: str = "study_rows"
              ) -> set[tuple]:
    """The ``fields`` of every row already in the JSON-lines file ``rows`` (none if it is absent); a
    line that is not JSON stops ``who`` with the line's number."""
    if not rows.exists():
        return set()
    keys = set()
    for n, line in enumerate(rows.read_text().splitlines(), 1):
        if line.strip():
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{who}: {rows} line {n}: not JSON ({e})") from None
            keys.add(tuple(r[f] for f in fields))
    return keys


def study_args(ap: argparse.ArgumentParser) -> None:
    """The options every study driver over the 27 runs shares."""
    ap.add_argument("--rows", type=Path, required=True, help="JSON-lines file the rows are appended to")
    ap.add_argument("--budget-min", type=float, default=30.0,
                    help="start no run once this many minutes have passed, or when the median run so far would "
                         "not end within them (extraction counts)")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "prefill-router" / "study")
    ap.add_argument("--pools", default="rb,lr,rl", help="comma-separated, of " + ", ".join(POOLS))
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of " + ", ".join(VARIANTS))
    ap.add_argument("--seeds", type=int, default=3)


def study_todo(ap: argparse.ArgumentParser, a: argparse.Namespace, who: str) -> list[tuple[int, str, str]]:
    """(seed, pool, variant) of every run ``study_args``' options ask for that ``a.rows`` lacks, seed by seed."""
    pools, variants = a.pools.split(","), a.variants.split(",")
    bad = [p for p in pools if p not in POOLS] + [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown pool or variant: {', '.join(bad)}")
    done = done_keys(a.rows, who=who)
    todo = [(s, p, v) for s in range(a.seeds) for p in pools for v in variants if (p, v, s) not in done]
    print(f"{who}: {len(done)} rows in {a.rows}, {len(todo)} to run, budget {a.budget_min:.0f} min", flush=True)
    return todo


def budget_left(t0: float, spent: list[float], budget_min: float) -> float | None:
    """Seconds left of ``budget_min`` since ``t0``; None where the next run should not start (none left,
    or less than the median of the runs ``spent`` so far)."""
    left = budget_min * 60 - (time.monotonic() - t0)
    return None if left <= 0 or (spent and float(np.median(spent)) > left) else left


def append_row(rows: Path, row: dict) -> None:
    """``row`` as one JSON line at the end of ``rows``, on disk before this returns."""
    rows.parent.mkdir(parents=True, exist_ok=True)
    with rows.open("a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    study_args(ap)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override for every run")
    a = ap.parse_args(argv)
    t0, spent = time.monotonic(), []
    prepared: dict[str, tuple] = {}
    for seed, pool, variant in study_todo(ap, a, "study_rows"):
        if budget_left(t0, spent, a.budget_min) is None:
            print(f"study_rows: budget reached; stopping before {pool} {variant} seed {seed}")
            break
        if pool not in prepared:
            prepared[pool] = prepare(pool, a.cache)
        data, feats = prepared[pool]
        t = time.monotonic()
        row = run_one(pool, variant, seed, data[variant], feats, a.cache, a.overrides)
        spent.append(time.monotonic() - t)
        append_row(a.rows, row)
        print(f"study_rows: {pool} {variant} seed {seed}: served {row['served']} "
              f"{row['test'][row['served']]['p_auccc']:.4f}, best candidate {row['best_candidate']} "
              f"(regret {row['regret']:.4f}), vs best baseline {row['vs_best_baseline']:+.4f}; "
              f"{spent[-1]:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
