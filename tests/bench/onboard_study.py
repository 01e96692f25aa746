"""A new target from few labels, measured (issue 42, slice 1): leave one target out, give back n of its
training outcomes, and see how well it is routed.

For RouterBench (``rb``) and LLMRouter-9 (``lr``), and in each for 3 targets (the cheapest on the
training calls, the most accurate, and the one of median accuracy among the rest), rows of:

- ``all``: the model trained with every outcome (the upper bound: study_rows' base model of seed
  0 under the cache where it exists, else trained here);
- ``without``: trained without the target (the pool's P-AUCCC without it);
- ``masked``: today's full retrain, the target's training outcomes cut to ``n`` at random and the
  masked loss doing the rest, for n in 50, 100, 200, 400;
- ``prior``: cheap, no retrain: the ``without`` model's routes for the other targets, and for the
  target the mean of its n labels per task (shrunk toward their overall mean by 10 pseudo-labels);
- ``logreg``: cheap, no retrain: the same, the target's column a logistic regression on the
  ``without`` model's trunk columns (standardised, PCA to 64 dims fitted on every training query),
  C chosen by 5-fold cross-validation on the n labels;
- ``similar``: cheap, no retrain: the same, the target's column a logistic regression on the logits
  of the ``without`` model's served probabilities for the other targets (out of fold on the label
  rows), C by cross-validation: a new model is right where the models like it are right.

Each row: the target's test AUC (that router's column) and the pool's test P-AUCCC with the served
router's other columns, on the test queries measured on every target of the pool (the ``without``
row on the same queries, its own targets), on its targets' cost axis and on the whole pool's
(``pool_p_auccc_full_axis``: the cheapest and dearest single of every target set the range and the
floor; only this one compares a pool without the target to one with it). A ``without`` model
trained by an earlier session is evaluated again, not retrained. Rows are appended to a JSON-lines file as each ends;
rows already there are skipped, so the study fills over sessions, each giving it ``--budget-min``.
Order: every ``without`` run first (its cheap fits follow at once, seconds each), then the n=200
retrains, then the other n.

    nohup .venv/bin/python -m tests.bench.onboard_study --rows docs/onboard-rows.jsonl --budget-min 30 \\
        > out/onboard.log 2>&1 &

Trains with the demo's settings in this process (``train.in_process``), seed 0, features and
datasets from tests/bench/study_rows.py's cache (made there once per pool).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from tests.bench import study_rows
from tests.bench.study_rows import REPO, prepare

POOLS, NS, ROLES = ("rb", "lr"), (50, 100, 200, 400), ("cheapest", "middle", "best")
SEED, PRIOR_WEIGHT, PCA_DIM = 0, 10.0, 64
CHEAP = ("prior", "logreg", "similar")  # the fits beside the ``without`` model, seconds each


def pick_targets(ds) -> dict[str, str]:
    """role -> target, on the training split: the cheapest (mean cost), the most accurate, and the one
    of median accuracy among the others."""
    from router_core.dataset import outcome_matrix
    from router_core.training import all_costs

    q = ds.queries
    qids, names = q.column("query_id").to_pylist(), list(ds.pool.names)
    train = np.array([s == "train" for s in q.column("split").to_pylist()])
    scores = outcome_matrix(ds.outcomes, qids, names)[train]
    cost = np.nanmean(all_costs(ds, qids, names, np.zeros(len(names)))[train], axis=0)
    acc = np.nanmean(scores, axis=0)
    cheapest, best = names[int(np.argmin(cost))], names[int(np.argmax(acc))]
    rest = sorted((a, t) for a, t in zip(acc, names) if t not in (cheapest, best))
    return {"cheapest": cheapest, "middle": rest[len(rest) // 2][1], "best": best}


def cut(ds, target: str, n: int | None, seed: int = SEED):
    """The dataset with ``target``'s training outcomes cut to ``n`` at random (None: every one of them
    dropped, and the target left out of the pool). Validation and test outcomes are kept."""
    import pyarrow as pa

    from router_core.dataset import Dataset
    from router_core.schemas import Pool

    q, o = ds.queries, ds.outcomes
    train = {x for x, s in zip(q.column("query_id").to_pylist(), q.column("split").to_pylist()) if s == "train"}
    models, qids = o.column("model").to_pylist(), o.column("query_id").to_pylist()
    if n is None:
        keep = [m != target for m in models]
        pool = Pool.model_validate(dict(ds.pool.model_dump(), models=[m for m in ds.pool.model_dump()["models"]
                                                                        if m["name"] != target]))
        return Dataset(q, o.filter(pa.array(keep)), pool)
    rows = np.flatnonzero([m == target and x in train for m, x in zip(models, qids)])
    chosen = set(np.random.default_rng(seed).permutation(rows)[:n].tolist())
    keep = [not (m == target and x in train) or i in chosen for i, (m, x) in enumerate(zip(models, qids))]
    return Dataset(q, o.filter(pa.array(keep)), ds.pool)


def slug(target: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", target)


def train_and_test(pool: str, data: str, feats: str, where: Path, cache: Path) -> dict:
    """Train (demo settings, seed 0, in process) and evaluate; the served router's test probabilities."""
    from jobs.evaluate import run_evaluate
    from jobs.train import run_train
    from router_core.config import load_config
    from router_core.training import fit_in_process

    cfg = load_config(str(REPO / "configs/demo.yaml"),
                      [f"train.seed={SEED}", f"baselines.random_seed={SEED}", "train.in_process=true",
                       f"baselines.semantic_features={cache / pool / 'semantic_features'}"])
    t0 = time.perf_counter()
    done = (where / "model" / "manifest.json").exists()  # a model an earlier session trained: evaluated again
    if not done:
        run_train(cfg, data, feats, str(where / "model"), fit_in_process)
    t1 = time.perf_counter()
    ev = run_evaluate(cfg, data, feats, str(where / "model"), str(where / "report"))
    served = ev.report["serving"]
    return {"served": served, "proba": ev.test.proba[served], "index": ev.test.index, "targets": ev.test_targets,
            "train_s": None if done else round(t1 - t0, 1), "columns": _trunk_columns(where / "model"),
            "model": where / "model"}


def _trunk_columns(model: Path) -> list[str]:
    index = json.loads((model / "manifest.json").read_text())
    return json.loads((model / index["routers"]["prefill_trunk"] / "manifest.json").read_text())["columns"]


def upper_bound(pool: str, data: str, feats: str, cache: Path, qids: list[str]) -> dict:
    """study_rows' base model of seed 0 where it is cached (the same settings), else trained here;
    ``qids``: the dataset's query ids, in order."""
    from router_core.held_out import from_table
    from router_core.storage import Storage

    base = cache / pool / "base" / f"seed{SEED}"
    if (base / "test_proba.parquet").exists():
        h, ids, targets = from_table(Storage().read_table(str(base / "test_proba.parquet")))
        served = json.loads((base / "model" / "manifest.json").read_text())["serve"]
        pos = {q: i for i, q in enumerate(qids)}
        return {"served": served, "proba": h.proba[served], "index": np.array([pos[q] for q in ids]),
                "targets": targets, "train_s": None, "columns": _trunk_columns(base / "model")}
    return train_and_test(pool, data, feats, cache / pool / "onboard" / "all", cache)


class Test:
    """The pool's test queries measured on every target and with features: positions among the
    dataset's queries, scores and costs (observed, else estimated as evaluate estimates them)."""

    def __init__(self, ds, targets: list[str], feats: str):
        from router_core.dataset import outcome_matrix
        from router_core.features import load_features
        from router_core.lengths import dataset_output_tokens, fit_output_lengths
        from router_core.storage import Storage
        from router_core.training import all_costs

        q = ds.queries
        self.qids, self.tasks = q.column("query_id").to_pylist(), q.column("task").to_pylist()
        split = np.array(q.column("split").to_pylist())
        self.train = split == "train"
        self.targets = targets
        self.scores_all = outcome_matrix(ds.outcomes, self.qids, targets)
        tokens, _ = dataset_output_tokens(ds, self.qids, targets, self.train)
        has_tasks = any(t is not None for t in self.tasks)
        lengths = fit_output_lengths(tokens, [self.tasks[i] for i in np.flatnonzero(self.train)] if has_tasks else None,
                                     targets)
        costs = all_costs(ds, self.qids, targets, lengths.expected(self.tasks if has_tasks else None, len(self.qids)))
        present = load_features(Storage(), feats, q, []).present
        self.rows = np.flatnonzero((split == "test") & ~np.isnan(self.scores_all).any(axis=1) & present)
        self.scores, self.costs = self.scores_all[self.rows], costs[self.rows]

    def take(self, run: dict) -> np.ndarray:
        """(len(rows), K') a run's test probabilities on these rows, in its own targets' order."""
        pos = {int(r): i for i, r in enumerate(run["index"])}
        missing = [int(r) for r in self.rows if int(r) not in pos]
        if missing:
            raise SystemExit(f"onboard_study: {len(missing)} test rows were not evaluated by {run['served']}")
        return run["proba"][[pos[int(r)] for r in self.rows]]

    def score(self, proba: np.ndarray, target: str, columns: list[str]) -> dict:
        """The target's AUC and the pool's P-AUCCC of ``proba`` (rows x ``columns``)."""
        from router_core import metrics as M

        cols = [self.targets.index(c) for c in columns]
        s, c = self.scores[:, cols], self.costs[:, cols]
        # On its own targets' axis (cost range and floor of their singles), and on the whole pool's: a
        # pool without its cheapest target has a dearer floor, and only the second compares across rows.
        out = {"pool_p_auccc": M.p_auccc(proba, s, c), "n_test": len(self.rows), "targets": len(columns),
               "pool_p_auccc_full_axis": M.p_auccc_of(M.threshold_curve(proba, s, c),
                                                      M.single_points(self.scores, self.costs))}
        if target in columns:
            k = columns.index(target)
            out["target_auc"] = M.mean_auc(proba[:, [k]], s[:, [k]])
        return out


def cheap_fits(test: Test, ds, feats: str, target: str, n: int, without: dict) -> dict[str, dict]:
    """``prior``, ``logreg`` and ``similar`` for ``target`` on its n labels (the ``masked`` run's rows), beside
    the ``without`` model's routes for the others: method -> row fields."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    from router_core.dataset import outcome_matrix
    from router_core.features import load_features
    from router_core.storage import Storage

    y_all = outcome_matrix(cut(ds, target, n).outcomes, test.qids, [target])[:, 0]
    lab = np.flatnonzero(test.train & np.isfinite(y_all))
    y = y_all[lab] >= 0.5
    others = test.take(without)
    order = list(without["targets"])

    def with_column(col: np.ndarray) -> np.ndarray:
        by_name = {t: others[:, i] for i, t in enumerate(order)}
        by_name[target] = col
        return np.stack([by_name[t] for t in test.targets], axis=1)

    t0 = time.perf_counter()
    overall = float(y.mean())
    tasks = np.array([str(t) for t in test.tasks], dtype=object)
    prior = {}
    for task in set(tasks[lab]):
        m = tasks[lab] == task
        prior[task] = (y[m].sum() + PRIOR_WEIGHT * overall) / (m.sum() + PRIOR_WEIGHT)
    p_prior = np.array([prior.get(t, overall) for t in tasks[test.rows]])
    rows = {"prior": dict(test.score(with_column(p_prior), target, test.targets), fit_s=round(time.perf_counter() - t0, 2))}

    t0 = time.perf_counter()
    fs = load_features(Storage(), feats, ds.queries, without["columns"])
    x = np.concatenate([fs.columns[c] for c in without["columns"]], axis=1).astype(np.float64)
    z = StandardScaler().fit(x[test.train]).transform(x)
    z = PCA(PCA_DIM, random_state=SEED).fit(z[test.train]).transform(z)
    minority = int(min(y.sum(), (~y).sum()))
    if minority >= 2:
        folds = StratifiedKFold(min(5, minority), shuffle=True, random_state=SEED)
        model = LogisticRegressionCV(Cs=np.logspace(-5, 1, 10), cv=folds, scoring="neg_log_loss", max_iter=3000,
                                     l1_ratios=(0.0,), use_legacy_attributes=False)
    else:  # one class (or one label of the other): nothing to cross-validate
        model = LogisticRegression(C=1e-3, max_iter=3000)
    p_fit = model.fit(z[lab], y).predict_proba(z[test.rows])[:, 1] if minority >= 1 else np.full(len(test.rows), overall)
    rows["logreg"] = dict(test.score(with_column(p_fit), target, test.targets), fit_s=round(time.perf_counter() - t0, 2),
                          C=float(np.atleast_1d(model.C_)[0]) if hasattr(model, "C_") else model.get_params()["C"])
    for r in rows.values():
        r["labels"], r["positives"] = len(lab), int(y.sum())
    rows["similar"] = similar_fit(test, target, lab, y, others, without)
    return rows


def similar_fit(test: Test, target: str, lab: np.ndarray, y: np.ndarray, others: np.ndarray, without: dict) -> dict:
    """``similar``: the target's column a logistic regression of its labels on the logits of the
    ``without`` model's served probabilities for the other targets (a new model is right where
    models like it are right), fitted on the label rows' out-of-fold probabilities (held_out.parquet:
    each predicted by a refit that did not see it), C by cross-validation; on test, the served
    router's probabilities."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from router_core.held_out import from_table
    from router_core.model import logit
    from router_core.storage import Storage

    t0 = time.perf_counter()
    index = json.loads((without["model"] / "manifest.json").read_text())
    held, ids, targets = from_table(Storage().read_table(str(without["model"] / index["held_out"])))
    if targets != list(without["targets"]):
        raise SystemExit(f"onboard_study: {without['model']}: held-out targets differ from the model's")
    pos = {q: i for i, q in enumerate(ids)}
    have = np.array([test.qids[r] in pos for r in lab])
    x_fit = logit(held.proba[without["served"]][[pos[test.qids[r]] for r in lab[have]]])
    y_fit = y[have]
    minority = int(min(y_fit.sum(), (~y_fit).sum()))
    if minority >= 2:
        folds = StratifiedKFold(min(5, minority), shuffle=True, random_state=SEED)
        lr = LogisticRegressionCV(Cs=np.logspace(-4, 2, 13), cv=folds, scoring="neg_log_loss", max_iter=3000,
                                  l1_ratios=(0.0,), use_legacy_attributes=False)
    else:
        lr = LogisticRegression(C=1e-3, max_iter=3000)
    model = make_pipeline(StandardScaler(), lr)
    if minority >= 1:
        p = model.fit(x_fit, y_fit).predict_proba(logit(others))[:, 1]
    else:
        p = np.full(len(others), float(y.mean()))
    by_name = {t: others[:, i] for i, t in enumerate(without["targets"])}
    by_name[target] = p
    proba = np.stack([by_name[t] for t in test.targets], axis=1)
    fitted = model[-1]
    return dict(test.score(proba, target, test.targets), fit_s=round(time.perf_counter() - t0, 2),
                C=float(np.atleast_1d(fitted.C_ if hasattr(fitted, "C_") else fitted.C)[0]), labels=int(have.sum()),
                positives=int(y_fit.sum()), labels_without_held_out=int((~have).sum()))


def onboard_row(ds, feats: str, target: str, n: int, without: Path) -> dict:
    """``onboard`` itself (the product, demo config) on the ``without`` model: n train labels of the
    target (the ``masked`` run's rows) and its test labels, the gain rule off so that the head's test
    AUC is measured either way; the served pool is the one with the target where the rule adds it
    (out of fold on the labelled rows), else the one without it."""
    import pyarrow as pa
    import yaml

    from jobs.onboard import run_onboard
    from router_core.config import load_config
    from router_core.storage import Storage

    c = cut(ds, target, n)
    split = dict(zip(c.queries.column("query_id").to_pylist(), c.queries.column("split").to_pylist()))
    o = c.outcomes
    keep = [m == target and split[q] in ("train", "test")
            for m, q in zip(o.column("model").to_pylist(), o.column("query_id").to_pylist())]
    new = without.parent / f"new{n}"
    Storage().write_table(o.filter(pa.array(keep)), str(new / "outcomes.parquet"))
    price = next(m for m in ds.pool.model_dump(exclude_none=True)["models"] if m["name"] == target)
    (new / "pool.yaml").write_text(yaml.safe_dump({"models": [price]}))
    cfg = load_config(str(REPO / "configs/demo.yaml"), ["onboard.require_gain=false", f"train.seed={SEED}"])
    t0 = time.perf_counter()
    run = run_onboard(cfg, str(without / "data"), feats, str(without / "model"), str(new), str(without.parent / f"onboard{n}"))
    d, t, g = run.decision, run.decision["test"], run.decision["pool_gain"]
    added = g["gain"] >= 0
    served = t["p_auccc"] if added else t["p_auccc_without"]
    return {"served": t["router"], "target_auc": t["target_auc"], "pool_p_auccc": served,
            "pool_p_auccc_full_axis": served, "p_auccc_with": t["p_auccc"], "p_auccc_without": t["p_auccc_without"],
            "added": added, "oof_gain": g, "head": d["head"], "heads": d["heads"], "labels": d["labels"],
            "onboard_s": round(time.perf_counter() - t0, 1), "n_test": t["n_test"]}


def done_keys(rows: Path) -> set[tuple]:
    return study_rows.done_keys(rows, ("pool", "role", "method", "n"), "onboard_study")


def plan(pools: list[str], ns: list[int]) -> list[tuple]:
    """(pool, role, kind, n) in the order they run: the bounds and every ``without`` run (with its
    cheap fits) first, then the masked retrains, n=200 first."""
    jobs = [(p, r, "all", None) for p in pools for r in ROLES] + [(p, r, "without", None) for p in pools for r in ROLES]
    order = sorted(ns, key=lambda n: (n != 200, n))
    return jobs + [(p, r, "masked", n) for n in order for p in pools for r in ROLES]


def table(rows: list[dict], ns: list[int]) -> str:
    """The rows as docs/onboarding.md shows them: per pool and target, each method's target AUC and the
    pool's P-AUCCC by n, beside the bounds (every outcome; the target left out)."""
    by = {(r["pool"], r["role"], r["method"], r["n"]): r for r in rows}
    head = ("| pool | target | method | " + " | ".join(f"AUC n={n}" for n in ns) + " | "
            + " | ".join(f"P-AUCCC n={n}" for n in ns) + " |")
    out = [head, "|" + "---|" * (3 + 2 * len(ns))]
    for pool in dict.fromkeys(r["pool"] for r in rows):
        for role in ROLES:
            first = next((r for r in rows if r["pool"] == pool and r["role"] == role), None)
            if first is None:
                continue
            name = f"{first['target']} ({role})"
            for method in ("masked", *CHEAP, "onboard_logloss", "onboard"):
                cells = [by.get((pool, role, method, n)) for n in ns]
                if any(cells):
                    out.append(f"| {pool} | {name} | {method} | "
                               + " | ".join(f"{c['target_auc']:.4f}" if c else "" for c in cells) + " | "
                               + " | ".join(f"{c['pool_p_auccc']:.4f}" if c else "" for c in cells) + " |")
            for method, label in (("all", "every outcome"), ("without", "left out")):
                r = by.get((pool, role, method, None))
                if r:
                    auc = f"{r['target_auc']:.4f}" if "target_auc" in r else "n/a"
                    full = r.get("pool_p_auccc_full_axis", r["pool_p_auccc"] if method == "all" else None)
                    out.append(f"| {pool} | {name} | {label} | " + " | ".join([auc] + [""] * (len(ns) - 1)) + " | "
                               + " | ".join([f"{full:.4f}" if full is not None else "n/a"] + [""] * (len(ns) - 1))
                               + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=Path, required=True, help="JSON-lines file the rows are appended to")
    ap.add_argument("--budget-min", type=float, default=30.0,
                    help="start no training run once this many minutes have passed, or when the median run so far "
                         "would not end within them")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "prefill-router" / "study")
    ap.add_argument("--pools", default=",".join(POOLS), help="comma-separated, of " + ", ".join(POOLS))
    ap.add_argument("--ns", default=",".join(map(str, NS)), help="the target's training labels kept, comma-separated")
    ap.add_argument("--table", action="store_true", help="print the rows already written as a Markdown table; run nothing")
    ap.add_argument("--no-masked", action="store_true", help="skip the masked retrains: the bounds, the cheap fits and "
                    "onboard only")
    a = ap.parse_args(argv)
    if a.table:
        rows = [json.loads(x) for x in a.rows.read_text().splitlines() if x.strip()] if a.rows.exists() else []
        print(table(rows, [int(x) for x in a.ns.split(",")]))
        return 0
    from jobs.runtime import code_version
    from router_core.dataset import load_dataset
    from router_core.storage import Storage

    pools, ns = a.pools.split(","), [int(x) for x in a.ns.split(",")]
    bad = [p for p in pools if p not in POOLS]
    if bad:
        raise SystemExit(f"onboard_study: unknown pool(s) {bad}; known: {', '.join(POOLS)}")
    t_start, took, done = time.perf_counter(), [], done_keys(a.rows)
    state: dict[str, dict] = {}
    for pool, role, kind, n in plan(pools, ns):
        if kind == "masked" and a.no_masked:
            continue
        wanted = [(pool, role, kind, n)] + ([(pool, role, m, x) for m in (*CHEAP, "onboard") for x in ns]
                                            if kind == "without" else [])
        if all(w in done for w in wanted):
            continue
        left = a.budget_min - (time.perf_counter() - t_start) / 60
        if kind != "all" and (left <= 0 or (took and float(np.median(took)) / 60 > left)):
            print(f"onboard_study: budget reached ({left:.1f} min left); stopping before {pool} {role} {kind} {n}",
                  flush=True)
            break
        if pool not in state:
            datas, feats = prepare(pool, a.cache)
            ds = load_dataset(Storage(), datas["base"])
            roles = pick_targets(ds)
            state[pool] = {"ds": ds, "feats": feats, "roles": roles, "test": Test(ds, list(ds.pool.names), feats)}
            print(f"onboard_study: {pool} targets {roles}", flush=True)
        st = state[pool]
        target, test = st["roles"][role], st["test"]
        where = a.cache / pool / "onboard" / slug(target) / (kind if n is None else f"{kind}{n}")
        t0 = time.perf_counter()
        if kind == "all":
            run = upper_bound(pool, datas_of(a.cache, pool), st["feats"], a.cache, test.qids)
        else:
            data = where / "data"
            if not (data / "queries.parquet").exists():
                from router_core.dataset import save_dataset
                save_dataset(Storage(), str(data), cut(st["ds"], target, n))
            run = train_and_test(pool, str(data), st["feats"], where, a.cache)
            if run["train_s"] is not None:
                took.append(time.perf_counter() - t0)
        base = {"pool": pool, "role": role, "target": target, "seed": SEED, "commit": code_version()}
        rows = [dict(base, method=kind, n=n, served=run["served"], train_s=run["train_s"],
                     **test.score(test.take(run), target, list(run["targets"])))]
        if kind == "without":
            rows += [dict(base, method=m, n=x, served=run["served"], train_s=0.0, **r)
                     for x in ns for m, r in cheap_fits(test, st["ds"], st["feats"], target, x, run).items()
                     if (pool, role, m, x) not in done]
            rows += [dict(base, method="onboard", n=x, train_s=0.0, **onboard_row(st["ds"], st["feats"], target, x, where))
                     for x in ns if (pool, role, "onboard", x) not in done]
        with a.rows.open("a") as f:
            for r in rows:
                if (r["pool"], r["role"], r["method"], r["n"]) not in done:
                    f.write(json.dumps(r) + "\n")
                    done.add((r["pool"], r["role"], r["method"], r["n"]))
                    print(f"onboard_study: {pool} {role} ({target}) {r['method']} n={r['n']}: target AUC "
                          f"{r.get('target_auc', float('nan')):.4f}, pool P-AUCCC {r['pool_p_auccc']:.4f}", flush=True)
    return 0


def datas_of(cache: Path, pool: str) -> str:
    return str(cache / pool / "data" / "base")


if __name__ == "__main__":
    raise SystemExit(main())
