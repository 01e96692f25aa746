"""Where the default route's accuracy goes, task by task: the model's own route (its operating
point) on the validation rows it was chosen on and on the test rows, against always calling the
best single target, per task (rows, the difference in accuracy, the reference's accuracy, the share
sent to the reference). A validation gain carried by one task that the test split lacks, or a task
whose test rows differ from its training rows, shows here and not in the pooled figure.

    python -m tests.bench.probe_tasks --data LR --model STUDY/llmrouter/seed0/model --features LRFEAT \
        --config configs/demo.yaml --seed 0
"""
from __future__ import annotations

import argparse
import glob
import tempfile

import pandas as pd

from jobs.route import run_route
from router_core.config import Policy, load_config
from router_core.model_index import read_index
from router_core.storage import Storage
from router_core.training import split_masks


def per_task(routes: pd.DataFrame, queries: pd.DataFrame, scores: pd.DataFrame, ref: str) -> tuple[pd.DataFrame, float]:
    r = routes.merge(queries[["query_id", "task"]], on="query_id")
    r["got"] = [scores.at[a, b] for a, b in zip(r.query_id, r.model)]
    r["ref"] = scores.loc[r.query_id, ref].to_numpy()
    r["d"] = r.got - r.ref
    g = r.groupby("task").agg(rows=("d", "size"), d_points=("d", "mean"), reference_acc=("ref", "mean"),
                              to_reference=("model", lambda m: (m == ref).mean()))
    g["d_points"] *= 100
    return g, 100 * float(r.d.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--features", required=True)
    ap.add_argument("--config")
    ap.add_argument("--seed", type=int, default=0, help="train.seed the model was trained with (its validation rows)")
    a = ap.parse_args()
    cfg = load_config(a.config, [f"train.seed={a.seed}"])
    q = pd.read_parquet(f"{a.data}/queries.parquet")
    o = pd.read_parquet(f"{a.data}/outcomes.parquet")
    scores = o.pivot_table(index="query_id", columns="model", values="score")
    ref = read_index(Storage(), a.model).best_single
    _, va = split_masks(q["split"].tolist(), q["query_id"].tolist(), a.seed, cfg.train.val_frac)
    with tempfile.TemporaryDirectory() as tmp:
        for name, rows in (("validation", va), ("test", (q["split"] == "test").to_numpy())):
            q[rows][["query_id", "text", "task"]].to_parquet(f"{tmp}/{name}.parquet", index=False)
            run_route(cfg, f"{tmp}/{name}.parquet", a.model, f"{tmp}/{name}", Policy(name="threshold"), a.features)
            routes = pd.concat(pd.read_parquet(f) for f in sorted(glob.glob(f"{tmp}/{name}/routes/*.parquet")))
            g, pooled = per_task(routes, q, scores, ref)
            print(f"\n{name}: {len(routes)} rows, default route vs always {ref}: {pooled:+.2f} points pooled, "
                  f"{g.d_points.mean():+.2f} with every task weighted alike")
            print(g.round(3).to_string())


if __name__ == "__main__":
    main()
