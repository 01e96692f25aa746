"""How well each estimate of output length does on a pipeline run's test calls (issue 32's study).

Reads a `prefill-router pipeline` output folder (OUT/data, OUT/features, OUT/model: `make demo`'s
by default) and compares, per target over the test calls whose length is known or derived from
their cost (router_core.lengths), averaged over targets:

- the target's median / mean alone (the estimate before router_core.lengths);
- the query's task's median / mean (router_core.lengths, what route uses);
- a ridge regression per target on the served trunk's prefill columns (PCA to 128 dims), with and
  without the task: on log1p tokens (judged by log error; its mean by Duan's smearing) and on
  tokens (judged by absolute error and by the sum's error, which is what a tally needs);
- and for each, the saving it states for the run's own routes (OUT/routes), against the saving the
  same routes have on observed costs. The routes stay as route decided them (on route's estimate).

    .venv/bin/python -m tests.bench.length_study --out out/demo

Prints one table; fits nothing that is saved.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pyarrow.parquet as pq
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler

from router_core.dataset import load_dataset, outcome_matrix
from router_core.evaluation import estimated_costs
from router_core.features import load_features
from router_core.lengths import dataset_output_tokens, fit_output_lengths
from router_core.storage import Storage, join


def _scores(pred_log: np.ndarray | None, pred_mean: np.ndarray, tokens: np.ndarray, saving=None) -> dict[str, float]:
    """Averaged over targets: log error of ``pred_log`` (log1p), absolute error and |sum error| of
    ``pred_mean``; and ``saving(pred_mean)``, the routes' estimated saving."""
    male, mae, sums = [], [], []
    for k in range(tokens.shape[1]):
        got = np.isfinite(tokens[:, k])
        y = tokens[got, k]
        if pred_log is not None:
            male.append(np.abs(pred_log[got, k] - np.log1p(y)).mean())
        mae.append(np.abs(pred_mean[got, k] - y).mean())
        sums.append(abs(pred_mean[got, k].sum() / y.sum() - 1))
    return {"male": float(np.mean(male)) if male else float("nan"), "mae": float(np.mean(mae)),
            "sum_err_pct": 100 * float(np.mean(sums)), "saving": saving(pred_mean) if saving else float("nan")}


def _ridge(x: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray, log: bool) -> np.ndarray:
    """(n_test, K) per-target ridge predictions; log: log1p scale, else tokens clipped at 0."""
    out = np.zeros((int(te.sum()), y.shape[1]))
    for k in range(y.shape[1]):
        ok = tr & np.isfinite(y[:, k])
        target = np.log1p(y[ok, k]) if log else y[ok, k]
        r = RidgeCV(alphas=np.logspace(-2, 5, 15)).fit(x[ok], target)
        out[:, k] = r.predict(x[te]) if log else np.maximum(r.predict(x[te]), 0.0)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/demo", help="a pipeline run's output folder (default: out/demo)")
    ap.add_argument("--pca", type=int, default=128)
    a = ap.parse_args(argv)
    st = Storage()
    ds = load_dataset(st, join(a.out, "data"))
    q = ds.queries
    qids, tasks = q.column("query_id").to_pylist(), q.column("task").to_pylist()
    split = np.array(q.column("split").to_pylist())
    index = json.loads(st.read_text(join(a.out, "model", "manifest.json")))
    targets = index["targets"]
    columns = json.loads(st.read_text(join(a.out, "model", index["routers"]["prefill_trunk"], "manifest.json")))["columns"]
    tokens, source = dataset_output_tokens(ds, qids, targets)
    tr, te = split == "train", split == "test"
    te_tasks = [tasks[i] for i in np.flatnonzero(te)]
    fs = load_features(st, join(a.out, "features"), q, columns)
    x = np.concatenate([fs.columns[c] for c in columns], axis=1).astype(np.float64)
    z = StandardScaler().fit(x[tr]).transform(x)
    z = PCA(a.pca, random_state=0).fit(z[tr]).transform(z)
    onehot = np.array([[t == u for u in sorted({t for t in tasks if t is not None})] for t in tasks], np.float64)
    lm = fit_output_lengths(tokens[tr], [tasks[i] for i in np.flatnonzero(tr)], targets)
    y = tokens[te]
    # The run's routes (decided on route's estimate), priced by each estimate: the saving a tally would
    # state against always the best single target. The observed one prices them with cost_usd.
    routes = pq.read_table(join(a.out, "routes", "routes")).to_pandas()
    pos = {qid: i for i, qid in enumerate(qids[i] for i in np.flatnonzero(te))}
    r_rows = np.array([pos[x] for x in routes["query_id"]])
    r_cols = np.array([targets.index(m) for m in routes["model"]])
    ref = targets.index(index["best_single"])
    chars = np.array([len(t) for t in q.column("text").to_pylist()], np.float64)[te]
    observed = outcome_matrix(ds.outcomes, qids, targets, "cost_usd")[te]

    def saving(out_tokens: np.ndarray) -> float:
        cost = estimated_costs(chars, ds.pool, targets, out_tokens)
        return 100 * (1 - cost[r_rows, r_cols].sum() / cost[r_rows, ref].sum())

    seen = np.isfinite(observed[r_rows, r_cols]) & np.isfinite(observed[r_rows, ref])
    obs = 100 * (1 - observed[r_rows, r_cols][seen].sum() / observed[r_rows, ref][seen].sum())
    rows = {
        "target median / mean": _scores(np.log1p(lm.typical(None, len(y))), lm.expected(None, len(y)), y, saving),
        "task median / mean (route)": _scores(np.log1p(lm.typical(te_tasks, len(y))), lm.expected(te_tasks, len(y)), y,
                                              saving),
        "no output tokens (before)": _scores(None, np.zeros_like(y), y, saving),
    }
    for name, feats in (("ridge on prefill", z), ("ridge on prefill + task", np.hstack([z, 10 * onehot]))):
        rows[name] = _scores(_ridge(feats, tokens, tr, te, log=True), _ridge(feats, tokens, tr, te, log=False), y,
                             saving)
    print(f"{a.out}: {len(targets)} targets, {int(te.sum())} test queries; lengths {source}; prefill {columns}, "
          f"PCA {a.pca}; the run's {len(routes)} routes save {obs:.1f}% on observed costs")
    print("| estimate | mean abs. log error | mean abs. error (tokens) | abs. error of the sum | routes' estimated saving |\n"
          "|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['male']:.3f} | {r['mae']:.1f} | {r['sum_err_pct']:.1f}% | {r['saving']:.1f}% |")


if __name__ == "__main__":
    main()
