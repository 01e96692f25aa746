"""Stage ``evaluate``: every router under MODEL on the dataset's test split -> report.json + report.html.

Rows are the test queries measured on every target (a router's cost-accuracy curve needs each
target's outcome); the others are counted in the report, never silently dropped. Costs per call
are the observed ``cost_usd``, else tokens x prices (see router_core.evaluation.call_costs).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np

from router_core import metrics as M
from router_core.artifacts import check_features_match, read_json
from router_core.config import AppConfig
from router_core.dataset import load_dataset, outcome_matrix
from router_core.errors import ArtifactError, DataError
from router_core.evaluation import (at_operating_point, build_report, call_costs, estimate_check, estimated_costs,
                                    paired_bootstrap, reliability)
from router_core.features import load_features, read_manifest
from router_core.held_out import HeldOut
from router_core.lengths import (LinearLengths, OutputLengths, dataset_output_tokens, expected_tokens,
                                 length_errors)
from router_core.model import ensemble_proba
from router_core.model_index import read_index, resolve_model
from router_core.reporting import report_files
from router_core.routers import RouterInputs, TrunkRouter, load_router, ordered
from router_core.storage import join

from .common import format_table, storage_from
from .encoding import semantic_embeddings

log = logging.getLogger(__name__)


@dataclass
class EvalRun:
    out: str
    report: dict
    seconds: float
    test: HeldOut | None = None  # every router's probabilities on the evaluated test rows (studies replay rules on them)
    test_targets: list[str] | None = None  # their columns


def run_evaluate(cfg: AppConfig, data: str, features: str, model: str, out: str) -> EvalRun:
    t0 = time.perf_counter()
    storage = storage_from(cfg)
    model = resolve_model(storage, model)  # a retrain folder: its champion
    index = read_index(storage, model)
    targets = index.targets
    ds = load_dataset(storage, data)
    missing = [t for t in targets if t not in ds.pool.names]
    if missing:
        raise DataError(f"{data}: pool.yaml lacks the model's target(s) {', '.join(missing)}")
    q = ds.queries
    splits = np.array(q.column("split").to_pylist(), dtype=object)
    test = splits == "test"
    if not test.any():
        raise DataError(f"{data}: no queries with split 'test' to evaluate on")
    qids = q.column("query_id").to_pylist()
    scores = outcome_matrix(ds.outcomes, qids, targets)

    routers = {name: load_router(storage, index.folder(model, name)) for name in index.routers}
    fman = read_manifest(storage, features)
    prefill_cols = sorted({c for r, m in routers.values() if "prefill" in r.needs for c in m["columns"]
                           if c not in TrunkRouter.EXTRA})
    for name, (r, m) in routers.items():
        if "prefill" in r.needs:
            check_features_match(dict(m, columns=[c for c in m["columns"] if c not in TrunkRouter.EXTRA]), fman)
    fs = load_features(storage, features, q, prefill_cols)
    sem_info = index.features["semantic"]
    sem = load_features(storage, sem_info.uri, q, [sem_info.column])
    sem_x, sem_present = sem.columns[sem_info.column], sem.present
    if not sem_present[test].all():  # new test texts: embed them through the extraction job's cache
        sem_x, sem_present, sman = semantic_embeddings(cfg, data, sem_info.uri, q)
        if sman["settings_key"] != sem_info.settings_key:
            raise ArtifactError(f"{sem_info.uri}: sentence embeddings of other settings than the model's")

    # A target never measured on the test split cannot be scored there: left out, and said so.
    on_test = ~np.isnan(scores[test]).all(axis=0)
    unscored = [t for t, ok in zip(targets, on_test) if not ok]
    if unscored:
        log.warning("evaluate: target(s) %s have no test outcome; left out of the metrics", ", ".join(unscored))
    keep_k = np.flatnonzero(on_test)
    measured = ~np.isnan(scores[:, keep_k]).any(axis=1)
    rows = test & measured & fs.present & sem_present
    counts = {"test": int(test.sum()), "evaluated": int(rows.sum()),
              "not_measured_on_every_target": int((test & ~measured).sum()),
              "without_features": int((test & measured & ~(fs.present & sem_present)).sum())}
    if not rows.any():
        raise DataError(f"{data}: none of the {counts['test']} test queries is measured on every target "
                        "and has features")
    tasks = q.column("task").to_pylist()
    scored = [targets[k] for k in keep_k]
    # A call's cost where observed, else input tokens x price + its expected output tokens x price
    # (the model's length map on these rows' features where it serves such queries, else the means).
    lengths, row_tasks = OutputLengths.of_index(index), [t for t, r in zip(tasks, rows) if r]
    lin = LinearLengths.load(storage, join(model, lengths.prefill["folder"])) if lengths.prefill else None
    by_map = lin.predict({c: fs.columns[c][rows] for c in lin.columns}) if lin and set(lin.columns) <= set(fs.columns) else None
    expect = expected_tokens(lengths, row_tasks, int(rows.sum()), by_map)
    texts = [t for t, r in zip(q.column("text").to_pylist(), rows) if r]
    costs, cost_source = call_costs(outcome_matrix(ds.outcomes, qids, scored, "cost_usd")[rows], texts, ds.pool,
                                    scored, expect[:, keep_k])
    x = RouterInputs(n=int(rows.sum()), prefill={c: v[rows] for c, v in fs.columns.items()},
                     semantic=sem_x[rows], tasks=[t for t, r in zip(tasks, rows) if r], scores=scores[rows])
    if "task_prior" in routers and any(t is not None for t in x.tasks):
        x.prior = routers["task_prior"][0].predict_proba(x)  # an input of trunks trained with it
    probas, calibration = {}, {}
    for name, (r, m) in routers.items():
        if "tasks" in r.needs and all(t is None for t in x.tasks):
            log.warning("evaluate: %s skipped, the dataset has no task column", name)
            continue
        if not isinstance(r, TrunkRouter):
            probas[name] = r.predict_proba(x)[:, keep_k]
        else:  # one forward for both the tempered and the raw probabilities
            logits = r.logits(x)
            probas[name] = ensemble_proba(logits, r.temperature_)[:, keep_k]
            untempered = ensemble_proba(logits)[:, keep_k]
            s = x.scores[:, keep_k]
            calibration[name] = {"temperature": r.temperature_, "ece_before": M.ece(untempered, s),
                                 "ece_after": M.ece(probas[name], s), "reliability": reliability(probas[name], s),
                                 "reliability_before": reliability(untempered, s)}
    report, curves = build_report(data, scored, x.scores[:, keep_k], costs, probas)
    serve = index.serve if index.serve in probas else next(iter(probas))
    report["serving"] = serve
    report["bootstrap"] = paired_bootstrap(probas, x.scores[:, keep_k], costs, serve, seed=cfg.train.seed)
    if index.operating_point:  # route's default: what it gives on the test rows
        op = at_operating_point(probas[serve], x.scores[:, keep_k], costs, index.operating_point,
                                scored.index(index.best_single) if index.best_single in scored else None)
        report["operating_point"] = dict(op, router=serve, reference=scored[op["reference_index"]])
    report["output_lengths"] = length_report(lengths, ds, qids, rows, row_tasks, texts, keep_k, costs, cost_source,
                                             probas[serve], index.operating_point, report.get("operating_point"), expect,
                                             by_map)
    report.update(counts=counts, cost_source=cost_source, model=model, features=features, unscored_targets=unscored,
                  calibration=calibration, seconds=time.perf_counter() - t0)
    storage.write_text(join(out, "report.json"), json.dumps(report, indent=2, default=_json_default))
    profile = None
    if index.layer_profile and storage.exists(join(model, index.layer_profile)):
        profile = read_json(storage, join(model, index.layer_profile))["profile"]
    for name, body in report_files(report, curves, profile).items():
        (storage.write_text if isinstance(body, str) else storage.write_bytes)(join(out, name), body)
    test_rows = HeldOut("test", probas, x.scores[:, keep_k], costs, np.zeros(x.n, int), np.flatnonzero(rows))
    return EvalRun(out, report, time.perf_counter() - t0, test_rows, scored)


def length_report(lengths: OutputLengths, ds, qids: list[str], rows: np.ndarray, tasks: list, texts: list[str],
                  keep_k: np.ndarray, costs: np.ndarray, cost_source: str, proba: np.ndarray, point: dict,
                  op: dict | None, expect: np.ndarray, by_map: np.ndarray | None) -> dict:
    """The length model on the evaluated test calls (its errors against the median's, per target;
    the length map's too where the model has one) and, where the calls' costs were observed, the
    served routes' estimated cost (on ``expect``, the tokens route would price with) against observed."""
    task_list = tasks if any(t is not None for t in tasks) else None
    tokens, source = dataset_output_tokens(ds, qids, lengths.targets, rows)
    out = {"model": lengths.describe(), "kind": lengths.kind, "test_calls": source,
           "per_target": length_errors(lengths, tokens, task_list, by_map)}
    if point and op and cost_source == "observed cost_usd":
        scored = [lengths.targets[k] for k in keep_k]
        est = estimated_costs(np.array([len(t) for t in texts]), ds.pool, scored, expect[:, keep_k])
        out["served_routes"] = estimate_check(proba, est, costs, float(point["tau"]), int(op["reference_index"]))
    return out


def _json_default(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(f"not JSON serialisable: {type(v)}")


def print_evaluate(run: EvalRun) -> None:
    r = run.report
    c = r["counts"]
    print(f"evaluated {len(r['routers'])} routers on {c['evaluated']} of {c['test']} test queries of {r['dataset']} "
          f"({c['not_measured_on_every_target']} not measured on every target, {c['without_features']} without "
          f"features) in {run.seconds:.1f} s; costs: {r['cost_source']}")
    b, o = r["best_single"], r["oracle"]
    print(f"best single {b['model']}: accuracy {b['accuracy']:.4f}, mean cost ${b['mean_cost']:.6f}; "
          f"oracle {o['accuracy']:.4f} at ${o['mean_cost']:.6f}; Pareto-AUCCC of the singles {r['pareto_auccc']:.4f}")
    two = any("apgr" in v for v in r["routers"].values())
    head = ["router", "accuracy", "mean cost $", "gap closed %", "P-AUCCC", "cost red. %", "mean AUC", "ECE", "AIQ"]
    rows = []
    for name in ordered(r["routers"]):
        v = r["routers"][name]
        row = [name, v["accuracy"], v["mean_cost"], v["gap_closed_pct"], v["p_auccc"], v["cost_reduction_pct"],
               v["mean_auc"], v["ece"], v["aiq"]]
        if two:
            row += [v["apgr"], v["cpt50_pct"]]
        rows.append(row)
    print(format_table(head + (["APGR", "CPT(50%)"] if two else []), rows))
    boot = r.get("bootstrap")
    if boot:
        print(f"serving {boot['router']}: paired bootstrap ({boot['n_boot']} resamples) {100 * boot['level']:.0f}% "
              "intervals of its difference to each router:")
        print(format_table(["vs", "d P-AUCCC", "interval", "d mean AUC", "interval"], [
            [k, v["p_auccc_diff"], "[{:+.4f}, {:+.4f}]".format(*v["p_auccc_ci"]) if v["p_auccc_ci"] else "n/a",
             v["mean_auc_diff"], "[{:+.4f}, {:+.4f}]".format(*v["mean_auc_ci"]) if v["mean_auc_ci"] else "n/a"]
            for k, v in boot["vs"].items() if k not in ("oracle", "random", "cheapest", "most_expensive")]))
    op = r.get("operating_point")
    if op:
        print(f"route's default (tau {op['tau']:.4f}, chosen by train on held-out rows): test accuracy {op['accuracy']:.4f} at "
              f"${op['mean_cost']:.6f}, saving {op['saving_pct']:.1f}% against always {op['reference']} "
              f"({op['reference_accuracy']:.4f} at ${op['reference_mean_cost']:.6f})")
    lengths = r.get("output_lengths")
    if lengths and lengths["per_target"]:
        per = lengths["per_target"]
        line = (f"output lengths: {lengths['model']}; log error below the median's on "
                f"{sum(v['male_model'] < v['male_median'] for v in per.values())} of {len(per)} targets")
        if all("mae_prefill" in v for v in per.values()):
            line += (f"; mean abs. error {np.mean([v['mae_prefill'] for v in per.values()]):.1f} tokens by the length "
                     f"map, {np.mean([v['mae_mean'] for v in per.values()]):.1f} by the means")
        if "served_routes" in lengths:
            s = lengths["served_routes"]
            line += f"; the served routes' estimated saving {s['estimated_saving_pct']:.1f}%, observed {s['observed_saving_pct']:.1f}%"
        print(line)
    for name, cal in r["calibration"].items():
        print(f"{name}: temperature {cal['temperature']:.3f}, test ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}")
    print(f"wrote {join(run.out, 'report.json')} and report.html")
