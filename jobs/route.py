"""Stage ``route``: decide which LLM answers each query of a bulk set, and what it will cost.

1. Read the queries (a Parquet file, a folder or prefix of parts, or a dataset folder); rows that
   cannot be routed (no id, duplicate id, no text) go to the rejects with their reason.
2. Prefill features through the extraction job's cache (the model's features folder unless
   ``--features`` names another): only texts it lacks are encoded, with the model's own settings.
3. Predict P(correct) per target with the trained router in Ray tasks over groups of feature parts
   balanced by rows, one per CPU (each reads only its parts and the model's columns and loads the
   router once per worker; memory stays bounded), and each call's output tokens where the model's
   length map serves such queries. A model serving the prior (train serves it where no learned
   router beats it) skips 2 and 3: its probabilities are a lookup of each query's task.
4. Assign routes by the policy (threshold, utility, or a batch budget) on estimated call costs:
   input tokens x price + expected output tokens x price (router_core.lengths).
5. Write OUT/routes/part-*.parquet, OUT/rejects.parquet, OUT/tally.json and last OUT/run.json
   (status complete). The run id (given, or a digest of queries, router and policy) owns OUT: a
   rerun of the same run rewrites the same files with the same routes; another run id is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from router_core import schemas
from router_core.artifacts import read_json
from router_core.config import AppConfig, Policy
from router_core.errors import ArtifactError, DataError
from router_core.lengths import index_costs, length_map
from router_core.features import MANIFEST, column_digest, read_manifest, settings_for
from router_core.model_index import read_index, resolve_model
from router_core.routers import ROUTERS, RouterInputs, TrunkRouter, load_router, predict_any
from router_core.routing import assign, promise_line, route_tally
from router_core.storage import Storage, join

from .actors import plan_groups, predict_parts
from .common import format_table, storage_from
from .encoding import encode, prepare
from .runtime import ensure_ray, ray_get

log = logging.getLogger(__name__)

ROUTES, RUN, TALLY, REJECTS = "routes", "run.json", "tally.json", "rejects.parquet"


@dataclass
class RouteRun:
    out: str
    run_id: str
    input_rows: int
    routed: int
    rejected: int
    tally: dict
    policy: dict
    seconds: dict

    def reconciles(self) -> bool:
        return self.input_rows == self.routed + self.rejected


def _run_id(given: str | None, keys: pa.Table, router_manifest: dict, policy: Policy) -> str:
    if given:
        return given
    h = hashlib.sha256()
    for col in ("query_id", "text_hash"):  # every value, in order
        h.update(column_digest(keys.column(col)).encode())
    h.update(json.dumps([router_manifest.get("weights_sha256"), policy.name, policy.params()]).encode())
    return h.hexdigest()[:16]


def _claim(storage: Storage, out: str, run_id: str) -> None:
    """OUT belongs to one run id: refuse another's folder; mark ours as running."""
    uri = join(out, RUN)
    if storage.exists(uri):
        old = read_json(storage, uri)
        if old.get("run_id") != run_id:
            raise ArtifactError(f"{out}: holds run {old.get('run_id')} ({old.get('status')}); this run is {run_id}: "
                                "write to another folder, or pass --run-id to rerun that one")
    storage.write_text(uri, json.dumps({"run_id": run_id, "status": "running", "started_unix": int(time.time())}))


def run_route(cfg: AppConfig, queries_uri: str, model: str, out: str, policy: Policy,
              features: str | None = None, run_id: str | None = None, router_name: str | None = None) -> RouteRun:
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    storage = storage_from(cfg)
    model = resolve_model(storage, model)  # a retrain folder serves its champion
    index = read_index(storage, model)
    name = router_name or index.serve
    folder = index.folder(model, name)
    rman = read_json(storage, join(folder, "manifest.json"))  # the weights load in the prediction tasks
    needs = rman.get("needs") or []
    if rman.get("router") not in ROUTERS or not set(needs) <= {"prefill", "tasks"}:
        raise ArtifactError(f"router {name} reads {', '.join(needs)}; `route` serves routers on prefill features "
                            "and the task column (either optional) only")
    if policy.name == "threshold" and policy.tau is None:  # the model's operating point, chosen by train
        policy = policy.model_copy(update={"tau": float(index.operating_point.get("tau", 0.0))})
    targets = index.targets

    ensure_ray(cfg)  # up first: a large batch's texts are hashed in Ray tasks
    prep = prepare(storage, queries_uri)
    n_in, src, keep, kept = prep.queries.num_rows, prep.src, prep.keep, prep.kept
    run_id = _run_id(run_id, kept.select(["query_id", "text_hash"]), rman, policy)
    _claim(storage, out, run_id)
    seconds["read"] = time.perf_counter() - t0

    tasks = kept.column("task").to_pylist() if "task" in kept.column_names and rman.get("uses_tasks") else None
    rejects = list(prep.rejects)
    if "prefill" in needs:  # with each call's output tokens where the model's length map serves these queries
        lin = length_map(storage, model, index, kept.column("task").to_pylist() if "task" in kept.column_names else None)
        proba, have, failed, feats, extract, tokens = _predict_prefill(cfg, storage, index, folder, rman, prep, features,
                                                                       tasks, len(targets), seconds, lin)
    else:  # the prior (train serves it where no learned router beats it): a table lookup, nothing to encode
        t = time.perf_counter()
        proba = predict_any(load_router(storage, folder)[0], RouterInputs(n=kept.num_rows, tasks=tasks)).astype(np.float32)
        have, failed, feats, tokens, extract = np.ones(kept.num_rows, bool), {}, None, None, dict(reused=0, extracted=0, rejected=0)
        log.info("route: %s reads no features (%s)", name,
                 "the queries' tasks" if tasks is not None else "no task column: every query gets the global mean")
        seconds["predict"] = time.perf_counter() - t

    t = time.perf_counter()
    # A query whose features are missing is rejected with the reason.
    if not have.all():
        for i, qid, h in zip(keep, kept.column("query_id").to_pylist(), have):
            if not h:
                rejects.append(dict(source=src, row=i, query_id=qid, model=None, column="text",
                                    reason=f"the encoder could not read the text ({failed[qid]})" if qid in failed
                                    else "no features were produced for this query"))
    routed = kept.filter(pa.array(have)) if not have.all() else kept
    proba, tokens = (proba[have], tokens[have] if tokens is not None else None) if not have.all() else (proba, tokens)
    costs, lengths, by = index_costs(index, pc.utf8_length(routed.column("text")).to_numpy(zero_copy_only=False),
                                 routed.column("task").to_pylist() if "task" in routed.column_names else None, tokens)
    try:
        routes, info = assign(policy.name, proba.astype(np.float64), costs, policy.tau, policy.lam, policy.budget_usd)
    except ValueError as e:
        raise DataError(f"route: {e}") from None
    best = targets.index(index.best_single) if index.best_single in targets else 0
    tal = route_tally(routes, proba, costs, targets, best, policy.name, info, index.operating_point, name)
    tal.update(cost_model=lengths.describe(), output_tokens_by=by)
    seconds["assign"] = time.perf_counter() - t

    t = time.perf_counter()
    version = f"{name}@{rman['weights_sha256'][:12]}"
    n = routed.num_rows
    cols = {
        "query_id": routed.column("query_id"),
        "model": pa.array(targets, pa.string()).take(pa.array(routes, pa.int64())),
        "est_cost_usd": pa.array(costs[np.arange(n), routes] if n else [], pa.float64()),
        "policy": pa.repeat(pa.scalar(policy.name), n),
        "policy_params": pa.repeat(pa.scalar(json.dumps(info, sort_keys=True)), n),
        "router_version": pa.repeat(pa.scalar(version), n),
        "run_id": pa.repeat(pa.scalar(run_id), n),
    }
    for k, tg in enumerate(targets):
        cols[f"p:{tg}"] = pa.array(proba[:, k] if n else [], pa.float32())
    table = pa.table(cols)
    step = cfg.route.rows_per_part
    n_parts = max(1, -(-n // step))
    with ThreadPoolExecutor(max_workers=min(n_parts, 4)) as pool:  # Parquet encoding releases the GIL
        list(pool.map(lambda j: storage.write_table(table.slice(j * step, step),
                                                    join(out, ROUTES, f"part-{j:05d}.parquet")), range(n_parts)))
    for stale in storage.list_files(join(out, ROUTES), ".parquet"):  # left by an earlier attempt of this run
        if int(stale.rsplit("part-", 1)[1].split(".")[0]) >= n_parts:
            storage.delete(stale)
    rej_uri = join(out, REJECTS)
    storage.write_table(schemas.rejects_table(rejects), rej_uri)
    seconds["write"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    run = RouteRun(out, run_id, n_in, n, len(rejects), tal, tal["policy"], seconds)
    if not run.reconciles():
        raise RuntimeError(f"route counts do not reconcile: {n_in} in, {n} routed, {len(rejects)} rejected")
    doc = {"run_id": run_id, "status": "complete", "queries": queries_uri, "model": model, "router": version,
           "features": feats, "input_rows": n_in, "routed": n, "rejected": len(rejects), "policy": tal["policy"],
           "extract": extract, "seconds": seconds, "finished_unix": int(time.time())}
    storage.write_text(join(out, TALLY), json.dumps(dict(tal, run_id=run_id, router=version), indent=2))
    storage.write_text(join(out, RUN), json.dumps(doc, indent=2))
    return run


def _predict_prefill(cfg: AppConfig, storage: Storage, index, folder: str, rman: dict, prep, features: str | None,
                     tasks: list | None, n_targets: int, seconds: dict, lin=None):
    """P(correct) of the kept queries by a router on prefill features: the features through the
    extraction job's cache (only texts it lacks are encoded), then Ray tasks over groups of feature
    parts. Returns (proba, which rows have features, why the encoder failed per query id, the features
    folder, the extraction counts, output tokens by the length map ``lin`` or None)."""
    import ray

    kept, trained_on = prep.kept, index.features["prefill"].uri
    feats = features or trained_on
    if storage.exists(join(feats, MANIFEST)) and read_manifest(storage, feats)["settings_key"] != rman["features_settings_key"]:
        raise ArtifactError(f"{feats}: features of other settings than the model's")
    t = time.perf_counter()
    # A new cache folder gets the model's settings, from its training features.
    ecfg = cfg.model_copy(update={"extract": settings_for(storage, cfg.extract, feats, trained_on)})
    ex = encode(ecfg, prep, feats)
    failed = {r["query_id"]: r["reason"] for r in ex.rejects[len(prep.rejects):]}  # the encoder could not read these
    seconds["extract"] = time.perf_counter() - t
    t = time.perf_counter()
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))  # tasks wait for a CPU; none idle meanwhile
    tcpu = cfg.route.task_cpus
    groups = plan_groups(ex.located, max(1, int(cpus / tcpu)))  # one wave, balanced by rows
    dim = int(ex.manifest["feature_dim"])
    task = ray.remote(num_cpus=tcpu)(predict_parts)
    columns = sorted(set(rman["columns"]) - set(TrunkRouter.EXTRA))
    lin = lin if lin is not None and set(lin.columns) <= set(columns) else None
    refs = [task.remote(items, storage.settings(), folder, rman["weights_sha256"], columns, dim, max(1, int(tcpu)),
                        [tasks[i] for i in dst] if tasks is not None else None, lin) for items, dst in groups]
    proba, have = np.zeros((kept.num_rows, n_targets), np.float32), np.zeros(kept.num_rows, bool)
    tokens = np.zeros((kept.num_rows, n_targets)) if lin is not None else None
    for done, (ref, (_, dst)) in enumerate(zip(refs, groups), 1):
        (proba[dst], got), have[dst] = ray_get(ref), True
        if tokens is not None:
            tokens[dst] = got
        log.info("route: predicted %d/%d groups of feature parts", done, len(refs))
    seconds["predict"] = time.perf_counter() - t
    return proba, have, failed, feats, {"reused": ex.reused, "extracted": ex.extracted, "rejected": ex.rejected}, tokens


def print_route(run: RouteRun) -> None:
    t = run.tally
    b = t["always_best_single"]
    print(f"saving {b['saving_pct']:.1f}% against always calling {b['model']}: expected accuracy "
          f"{t['expected_accuracy']:.4f} vs {b['expected_accuracy']:.4f} (router {t.get('router')}, policy "
          f"{t['policy']['name']} {', '.join(f'{k}={v:.4g}' for k, v in t['policy'].items() if isinstance(v, float))})")
    print(f"route run {run.run_id}: {run.input_rows} queries in = {run.routed} routed + {run.rejected} rejected "
          f"({run.seconds['total']:.1f} s: " + ", ".join(f"{k} {v:.1f}" for k, v in run.seconds.items() if k != "total")
          + ")")
    print(format_table(["model", "queries", "share", "est. $"], [[m, v["queries"], f"{100 * v['share']:.1f}%", v["cost_usd"]]
                                                                 for m, v in t["per_model"].items() if v["queries"]]))
    p = run.policy
    print(f"policy {p['name']} " + ", ".join(f"{k}={v:.6g}" for k, v in p.items() if isinstance(v, (int, float)))
          + (f" ({p['source']})" if "source" in p else ""))
    print(f"total ${t['total_cost_usd']:.4f}, expected accuracy {t['expected_accuracy']:.4f}; output tokens by "
          f"{t.get('output_tokens_by', 'median')} (the model: {t.get('cost_model', 'median output tokens per target')})")
    if t.get("promise"):
        print(promise_line(t["promise"], t["always_best_single"]["model"]))
    if t.get("note"):
        print(t["note"])
    for key, label in (("always_most_expensive", "always the most expensive"), ("always_best_single", "always the best single")):
        b = t[key]
        print(f"  vs {label} ({b['model']}): ${b['cost_usd']:.4f}, expected accuracy {b['expected_accuracy']:.4f}; "
              f"saving {b['saving_pct']:.1f}%")
    print(f"wrote {join(run.out, ROUTES)}/, {TALLY}, {REJECTS}, {RUN}")
