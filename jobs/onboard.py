"""Stage ``onboard``: a new target model from a few hundred labelled answers, without retraining.

    prefill-router onboard --data DATASET --features FEATURES --model MODEL --new NEW --out OUT

NEW holds ``outcomes.parquet`` (canonical schema, one model not yet in the pool) and ``pool.yaml``
with that model's prices. The labels on train and validation queries fit the new column
(router_core.onboard); those on test queries are what ``evaluate`` scores it on. OUT gets:

    dataset/          DATASET with the new outcomes and the model in pool.yaml
    model/            a new model version: the served router (and the prior, best single, random
                      and oracle references) with the old routers nested unchanged, the new column
                      beside them, a new operating point, and the lineage in manifest.json
    report/           evaluate on the test split
    decision.json     the head chosen, the pool's P-AUCCC with and without the target, the counts
    rejects.parquet   rows that could not join, each with its reason

Where, out of fold on the labelled rows, the pool routes worse with the target than without it,
nothing but decision.json (and the rejects) is written, unless onboard.require_gain is false.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from router_core import schemas
from router_core.config import AppConfig
from router_core.dataset import Dataset, conform, load_dataset, outcome_matrix, parse_pool, save_dataset
from router_core.errors import DataError
from router_core.lengths import dataset_output_tokens, fit_output_lengths
from router_core.model_index import ModelIndex, read_index, resolve_model
from router_core.onboard import choose_head, fit_prior, pool_gain, served_proba
from router_core.routers import Onboarded, RandomRouter, load_router, save_router
from router_core.selection import OperatingRule, point_on
from router_core.storage import Storage, join
from router_core.training import all_costs, data_fingerprint
from router_core.validation import validate

from .common import storage_from

log = logging.getLogger(__name__)
REFERENCES = ("best_single", "random", "oracle")  # carried with the new column: evaluate's reference points
DROPPED = ("weights_sha256", "router", "needs", "uses_tasks")  # a saved router's manifest fields save_router rewrites


@dataclass
class OnboardRun:
    out: str
    added: bool
    decision: dict
    rejected: int
    report: dict | None = None


def read_new(storage: Storage, new: str, ds: Dataset, index: ModelIndex) -> tuple[pa.Table, object, list[dict]]:
    """The new outcomes (rows of known queries), the new model's pool entry, and the rejects."""
    src = join(new, "outcomes.parquet")
    if not storage.exists(src):
        raise DataError(f"{new}: no outcomes.parquet (the new target's labelled answers, canonical schema)")
    o, _ = conform(storage.read_table(src), schemas.OUTCOMES, src)
    models = sorted(set(o.column("model").to_pylist()))
    if len(models) != 1:
        raise DataError(f"{src}: outcomes of {len(models)} models ({', '.join(models[:5])}); onboard adds one")
    name = models[0]
    if name in index.targets or name in ds.pool.names:
        raise DataError(f"{src}: {name} is already in the pool; new outcomes of a known target go through `retrain`")
    pool_src = join(new, "pool.yaml")
    entry = None
    if storage.exists(pool_src):
        entry = next((m for m in parse_pool(storage.read_text(pool_src), pool_src).models if m.name == name), None)
    if entry is None:
        raise DataError(f"{new}: no prices for {name} (pool.yaml with its price_in and price_out per token)")
    known = set(ds.queries.column("query_id").to_pylist())
    qids = o.column("query_id").to_pylist()
    ok = [q in known for q in qids]
    rejects = [dict(source=src, row=i, query_id=q, model=name, column="query_id",
                    reason="unknown query: not in the dataset's queries.parquet (onboard labels known queries)")
               for i, (q, good) in enumerate(zip(qids, ok)) if not good]
    return o.filter(pa.array(ok, pa.bool_())), entry, rejects


def run_onboard(cfg: AppConfig, data: str, features: str, model: str, new: str, out: str) -> OnboardRun:
    from .evaluate import run_evaluate

    t0, oc = time.perf_counter(), cfg.onboard
    storage = storage_from(cfg)
    model = resolve_model(storage, model)
    index = read_index(storage, model)
    ds = load_dataset(storage, data)
    new_o, entry, rejects = read_new(storage, new, ds, index)
    unknown = len(rejects)
    pool = ds.pool.model_copy(deep=True)
    pool.models.append(entry)
    res = validate(Dataset(ds.queries, pa.concat_tables([ds.outcomes, new_o]), pool), join(data, "queries.parquet"),
                   join(new, "outcomes.parquet"))
    rejects += res.rejects.to_pylist()
    merged, target = res.dataset, entry.name
    targets = [*index.targets, target]
    q = merged.queries
    qids, splits = q.column("query_id").to_pylist(), np.array(q.column("split").to_pylist(), dtype=object)
    tasks_all = q.column("task").to_pylist()
    has_tasks = any(t is not None for t in tasks_all)
    y_all = outcome_matrix(merged.outcomes, qids, [target])[:, 0]
    labelled = np.flatnonzero(np.isin(splits, ["train", "val"]) & np.isfinite(y_all))
    base, have, oof = served_proba(storage, model, index, index.serve, merged, features, labelled)
    # Every row read ends in the new dataset or in the rejects; of those joined, some fit the head.
    joined = int(np.isfinite(y_all).sum())
    counts = {"read": new_o.num_rows + unknown, "rejected_unknown_query": unknown,
              "rejected_invalid": len(rejects) - unknown, "joined": joined, "fitted": int(have.sum()),
              "train_val_without_features": int((~have).sum()), "test_or_other_split": joined - len(labelled)}
    rows, base = labelled[have], base[have]
    y = y_all[rows]
    right = int((y >= 0.5).sum())
    if len(rows) < oc.min_labels or min(right, len(rows) - right) < 5:
        raise DataError(f"{new}: {len(rows)} usable labels of {target} on train/val queries ({right} right); onboard "
                        f"needs at least {oc.min_labels} (onboard.min_labels), with at least 5 right and 5 wrong")
    tasks = [tasks_all[i] for i in rows] if has_tasks else None
    choice = choose_head(base, tasks, y, oc.prior_weight, oc.folds, cfg.train.seed, margin_se=oc.margin_se)

    # The pool with and without the target, out of fold, on the labelled rows measured on every target.
    tokens, source = dataset_output_tokens(merged, qids, targets, splits == "train")
    lengths = fit_output_lengths(tokens, [t for t, s in zip(tasks_all, splits) if s == "train"] if has_tasks else None,
                                 targets, source)
    scores = outcome_matrix(merged.outcomes, qids, targets)[rows]
    costs = all_costs(merged, qids, targets, lengths.expected(tasks_all if has_tasks else None, len(qids)))[rows]
    full = ~np.isnan(scores).any(axis=1)
    if full.sum() < oc.folds:
        raise DataError(f"{new}: {int(full.sum())} labelled train/val queries are measured on every target; the pool's "
                        f"gain needs at least {oc.folds}")
    gain = pool_gain(base[full], choice.oof[full], scores[full], costs[full])
    added = gain["gain"] >= 0 or not oc.require_gain
    decision = {"target": target, "from_model": model, "new": new, "labels": int(len(rows)), "right": right,
                "label_rows": {"out_of_fold": int(oof[have].sum()), "predicted": int((~oof[have]).sum())},
                "head": choice.kind, "heads": choice.table, "head_fit": choice.info, "pool_gain": gain,
                "rule": "add the target where, out of fold on the labelled rows measured on every target, the pool's "
                        "P-AUCCC with it is at least that without it (onboard.require_gain)",
                "added": added, "rejected": len(rejects), "counts": counts}
    if rejects:
        storage.write_table(schemas.rejects_table(rejects), join(out, "rejects.parquet"))
    report = None
    if added:
        decision["model"] = join(out, "model")
        save_dataset(storage, join(out, "dataset"), merged)
        p_op = np.column_stack([base[full], choice.oof[full]])
        mean_acc = np.nanmean(scores[full], axis=0)
        best = targets.index(index.best_single) if mean_acc[-1] <= mean_acc[targets.index(index.best_single)] \
            else len(targets) - 1
        op = point_on(p_op, scores[full], costs[full], best, {"labelled": int(full.sum())},
                      OperatingRule.of(cfg.train))
        write_model(storage, model, index, join(out, "model"), merged, targets, choice.head,
                    fit_prior(tasks, y, oc.prior_weight), float(y.mean()), lengths, op, targets[best],
                    dict(decision, config=oc.model_dump(), seconds=time.perf_counter() - t0), cfg)
        ev = run_evaluate(cfg, join(out, "dataset"), features, join(out, "model"), join(out, "report"))
        report, decision["test"] = ev.report, test_figures(ev, target)
    decision["seconds"] = time.perf_counter() - t0
    storage.write_text(join(out, "decision.json"), json.dumps(decision, indent=2))
    return OnboardRun(out, added, decision, len(rejects), report)


def write_model(storage: Storage, model: str, index: ModelIndex, out: str, merged: Dataset, targets: list[str],
                head, prior_head, label_mean: float, lengths, op: dict, best_single: str, lineage: dict,
                cfg: AppConfig) -> ModelIndex:
    """The new version: the served router and the references with the new column, the index last."""
    old = index.targets
    names = [index.serve, *(n for n in ("task_prior", *REFERENCES) if n in index.routers and n != index.serve)]
    for name in names:
        router, manifest = load_router(storage, index.folder(model, name))
        if name == index.serve:
            router = Onboarded(router, old, [head])
        elif name == "task_prior":
            router = Onboarded(router, old, [prior_head])
        elif name == "best_single":
            router.proba_ = np.r_[router.proba_, label_mean]
        elif name == "random":
            router = RandomRouter(len(targets), router.seed)
        keep = {k: v for k, v in manifest.items() if k not in DROPPED}
        save_router(storage, join(out, name), router, dict(keep, targets=targets, onboarded=targets[len(old):]))
    if index.layer_profile and storage.exists(join(model, index.layer_profile)):
        storage.write_text(join(out, index.layer_profile), storage.read_text(join(model, index.layer_profile)))
    digest = hashlib.sha256(storage.read_bytes(join(model, "manifest.json"))).hexdigest()
    fields = dict(index.model_dump(), targets=targets, pool=merged.pool.model_dump(exclude_none=True),
                  data_fingerprint=data_fingerprint(merged), default=index.serve, routers={n: n for n in names},
                  best_single=best_single, output_tokens_median={t: float(m) for t, m in zip(targets, lengths.median)},
                  output_lengths=lengths.to_dict(), held_out=None, operating_point=op,
                  seconds={"onboard": float(lineage["seconds"])},
                  config=dict(index.config, onboard=cfg.onboard.model_dump()),
                  onboard={"targets": [*index.onboard.get("targets", []), targets[-1]],
                           "from_index_sha256": digest, **lineage})
    new_index = ModelIndex.model_validate({k: v for k, v in fields.items() if v is not None})
    new_index.save(storage, out)
    return new_index


def test_figures(ev, target: str) -> dict:
    """The served router on the evaluated test rows: the pool's P-AUCCC with the new column and
    without it (the old targets' columns, the old model's to the bit), both on the whole pool's cost
    axis, and the new target's AUC; or only that it was not scored (no test labels of it)."""
    from router_core import metrics as M

    serve = ev.report["serving"]
    out = {"router": serve, "n_test": ev.report["n_test"], "p_auccc": ev.report["routers"][serve]["p_auccc"]}
    if target not in ev.test_targets:
        return dict(out, target_scored=False)
    p, s, c, k = ev.test.proba[serve], ev.test.scores, ev.test.costs, ev.test_targets.index(target)
    old = [j for j in range(len(ev.test_targets)) if j != k]
    singles = M.single_points(s, c)
    return dict(out, target_scored=True, target_auc=M.roc_auc(p[:, k], s[:, k]),
                p_auccc_without=M.p_auccc_of(M.threshold_curve(p[:, old], s[:, old], c[:, old]), singles))


def print_onboard(run: OnboardRun) -> None:
    d = run.decision
    g = d["pool_gain"]
    heads = ", ".join(f"{k} {v['oof_log_loss']:.4f}" for k, v in d["heads"].items())
    print(f"onboard {d['target']}: {d['labels']} labels ({d['right']} right; {d['label_rows']['out_of_fold']} read "
          f"out of fold); head {d['head']} (out-of-fold log loss: {heads}); {d['rejected']} rows rejected")
    print(f"  the pool on {g['rows']} labelled rows measured on every target, out of fold: P-AUCCC "
          f"{g['p_auccc_with']:.4f} with it, {g['p_auccc_without']:.4f} without")
    if not run.added:
        print(f"  not added: the pool routes worse with it ({d['rule']}); wrote {join(run.out, 'decision.json')}")
        return
    t = d["test"]
    line = f"  added: {d['model']}; on {t['n_test']} test queries, {t['router']}'s P-AUCCC {t['p_auccc']:.4f}"
    if t["target_scored"]:
        line += f" ({t['p_auccc_without']:.4f} without the new column), the new target's AUC {t['target_auc']:.4f}"
    else:
        line += " (the new target has no test labels: not scored)"
    print(line + f"; {d['seconds']:.1f} s")
