"""``retrain``: fold new labelled outcomes into the training data, retrain, promote only if not worse.

Layout under ``retrain.models`` (local or s3://)::

    champion.json            {"version": "v0002", "model": ".../v0002/model", ...}: what serves
    v0001/ v0002/ ...        one folder per retraining: dataset/, model/, report/, decision.json

1. New data: every batch folder under ``retrain.new`` holding ``outcomes.parquet`` (canonical
   schema; router_core.labels; none is needed for the first model, v0001, trained on ``retrain.data``
   alone), but those already in the champion's data (each version's ``decision.json`` lists its
   data's batches: ``merge.batch_names``). A run happens only for a batch that no version has had
   yet: a rerun with nothing new prints so and changes nothing. A batch holds ``queries.parquet``
   for queries the training data lacks and, for a target model not in the pool, its prices in
   ``pool.yaml``. New queries join the ``train`` split, so the test
   split stays the one both models are judged on. Outcomes of a model with no price are rejected
   with that reason (``vNNNN/rejects.parquet``); the rest is checked by ``validate``'s rules.
   A batch of one model not in the champion's pool, with fewer than ``onboard.max_rows`` outcomes
   and its prices, goes through ``onboard`` instead (one per run, into the next ``vNNNN/``, promoted
   where onboard adds the target); the next run merges it with the rest and retrains in full.
2. Features: the extraction job's cache (``retrain.features``): only new texts are encoded.
3. The challenger is trained with the same settings (this config) into ``vNNNN/model``.
4. Challenger and champion are evaluated on the same fixed test split; the challenger is promoted
   (``champion.json`` rewritten last) only if the P-AUCCC of its index's default router is not
   worse than the champion's default router's. The decision and both reports are written to
   ``vNNNN/decision.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from router_core import schemas
from router_core.config import AppConfig
from router_core.dataset import load_dataset, save_dataset
from router_core.errors import ConfigError
from router_core.features import settings_for
from router_core.labels import batch_folders, merge_new, onboard_batch
from router_core.model_index import Champion, read_champion, read_index, versions
from router_core.storage import Storage, join
from router_core.validation import validate

from .common import storage_from

log = logging.getLogger(__name__)


@dataclass
class RetrainRun:
    version: str
    promoted: bool
    decision: dict


def _batches_of(storage: Storage, models: str, version: str) -> list[str]:
    """The batch folders in version ``version``'s data (its decision's ``merge.batch_names``)."""
    uri = join(models, version, "decision.json")
    return json.loads(storage.read_text(uri)).get("merge", {}).get("batch_names", []) if storage.exists(uri) else []


def _onboard(cfg: AppConfig, storage: Storage, champion: Champion, batch: str, version: str,
             merged_in: frozenset[str]) -> RetrainRun:
    """A new target from few labels: ``onboard`` on the champion into vNNNN/, promoted where added."""
    from .onboard import run_onboard

    rc, root = cfg.retrain, join(cfg.retrain.models, version)
    run = run_onboard(cfg, champion.dataset, rc.features, champion.model, batch, root)
    t = run.decision.get("test", {})
    # The champion beside the challenger on the same test rows: its served router's columns are the
    # challenger's first ones, bit for bit, so the pool without the new column is the champion's.
    promoted = run.added and (not t.get("target_scored") or t["p_auccc"] >= t["p_auccc_without"])
    d = dict(run.decision, version=version, merge={"batches": 1, "new_queries": 0, "new_outcomes": run.decision["labels"],
                                                   "new_models": [run.decision["target"]],
                                                   "batch_names": sorted(merged_in | {batch})}, promoted=promoted,
             decided_unix=int(time.time()),
             via="onboard", rule_promote="promote where onboard adds the target and, where the test split has its "
             "labels, the served router's test P-AUCCC with it is not below the champion's without it (both on the "
             "whole pool's cost axis)")
    if t.get("target_scored"):
        d["champion"] = {"version": champion.version, "p_auccc": t["p_auccc_without"], "router": t["router"]}
    storage.write_text(join(root, "decision.json"), json.dumps(d, indent=2))
    if promoted:
        Champion(version=version, model=join(root, "model"), dataset=join(root, "dataset"), features=rc.features,
                 p_auccc=float(d["test"]["p_auccc"]), promoted_unix=int(time.time())).save(storage, rc.models)
    return RetrainRun(version, promoted, d)


def run_retrain(cfg: AppConfig) -> RetrainRun:
    from .evaluate import run_evaluate
    from .extract import run_extract
    from .train import run_train

    rc = cfg.retrain
    if not (rc.data and rc.new and rc.features and rc.models):
        raise ConfigError("retrain: set retrain.data, retrain.new, retrain.features and retrain.models")
    t0 = time.perf_counter()
    storage = storage_from(cfg)
    done = versions(storage, rc.models)
    version = f"v{(int(done[-1][1:]) + 1) if done else 1:04d}"
    root = join(rc.models, version)
    champion = read_champion(storage, rc.models)
    # Batches already in the champion's data are not merged again; a run only happens for a batch no
    # version has tried yet, so a rerun with nothing new changes nothing.
    batches_of = {v: _batches_of(storage, rc.models, v) for v in done}
    merged_in = frozenset(batches_of.get(champion.version, [])) if champion else frozenset()
    tried = {b for bs in batches_of.values() for b in bs}
    fresh = [b for b in batch_folders(storage, rc.new) if b not in tried]
    if champion is not None and not fresh:
        return RetrainRun(champion.version, False, {"nothing_new": rc.new, "champion": champion.version})
    if champion is not None and cfg.onboard.max_rows:
        batch = onboard_batch(storage, fresh, read_index(storage, champion.model).targets, cfg.onboard.max_rows)
        if batch is not None:  # one new target per run; the next run merges the rest (and retrains in full)
            return _onboard(cfg, storage, champion, batch, version, merged_in)
    base = load_dataset(storage, champion.dataset if champion else rc.data)
    merged, rejects, counts = merge_new(storage, base, rc.new, none_ok=champion is None, skip=merged_in)  # day 0: data alone
    counts["batch_names"] = sorted(merged_in | set(counts["batch_names"]))  # every batch in this version's data
    res = validate(merged, join(root, "dataset", "queries.parquet"), join(root, "dataset", "outcomes.parquet"))
    rejects += res.rejects.to_pylist()
    data_uri = join(root, "dataset")
    save_dataset(storage, data_uri, res.dataset)
    if rejects:
        storage.write_table(schemas.rejects_table(rejects), join(root, "rejects.parquet"))
        for r in rejects[:5]:
            log.warning("retrain: rejected %s row %s: %s", r["source"], r["row"], r["reason"])
    cache_cfg = cfg.model_copy(update={"extract": settings_for(storage, cfg.extract, rc.features)})
    ex = run_extract(cache_cfg, data_uri, rc.features)  # the cache's own settings
    log.info("retrain: features: %d reused, %d extracted", ex.reused, ex.extracted)
    challenger = join(root, "model")
    name = run_train(cfg, data_uri, rc.features, challenger).index.default  # the router the two are judged by
    rep_c = run_evaluate(cfg, data_uri, rc.features, challenger, join(root, "report")).report
    decision = {"version": version, "dataset": data_uri, "model": challenger, "merge": counts, "router": name,
                "rejected": len(rejects), "challenger": {"report": join(root, "report", "report.json"),
                                                          "p_auccc": rep_c["routers"][name]["p_auccc"],
                                                          "mean_auc": rep_c["routers"][name]["mean_auc"]}}
    promoted = True
    if champion:
        rep_old = run_evaluate(cfg, data_uri, champion.features, champion.model,
                               join(root, "champion_report")).report
        old = read_index(storage, champion.model).default
        decision["champion"] = {"version": champion.version, "report": join(root, "champion_report", "report.json"),
                                "router": old, "p_auccc": rep_old["routers"][old]["p_auccc"],
                                "mean_auc": rep_old["routers"][old]["mean_auc"]}
        promoted = decision["challenger"]["p_auccc"] >= decision["champion"]["p_auccc"]
        if rep_old["targets"] != rep_c["targets"]:
            decision["note"] = (f"targets differ (champion {len(rep_old['targets'])}, challenger "
                                f"{len(rep_c['targets'])}): each is scored on its own targets over the same queries")
    decision.update(promoted=promoted, seconds=time.perf_counter() - t0, decided_unix=int(time.time()),
                    rule="promote when the challenger's default router's P-AUCCC >= the champion's on the same test split")
    storage.write_text(join(root, "decision.json"), json.dumps(decision, indent=2))
    if promoted:  # the pointer moves last: a crash before this leaves the old champion serving
        Champion(version=version, model=challenger, dataset=data_uri, features=rc.features,
                 p_auccc=decision["challenger"]["p_auccc"], promoted_unix=int(time.time())).save(storage, rc.models)
    return RetrainRun(version, promoted, decision)


def print_retrain(run: RetrainRun) -> None:
    d = run.decision
    if "nothing_new" in d:
        print(f"retrain: no batch under {d['nothing_new']} that a version has not had; champion {d['champion']} stays")
        return
    if d.get("via") == "onboard":
        g = d["pool_gain"]
        print(f"retrain {run.version}: {d['target']} onboarded from {d['labels']} labels (head {d['head']}; out of fold "
              f"the pool's P-AUCCC {g['p_auccc_with']:.4f} with it, {g['p_auccc_without']:.4f} without), no full retrain")
        if "champion" in d:
            print(f"test P-AUCCC {d['test']['p_auccc']:.4f} with it vs champion {d['champion']['version']} "
                  f"{d['champion']['p_auccc']:.4f} without it (the same rows, the whole pool's axis)")
        print(("promoted: champion.json now points at " + d["model"]) if run.promoted else
              "not promoted: the champion stays")
        return
    m = d["merge"]
    print(f"retrain {run.version}: {m['batches']} batch(es), {m['new_queries']} new queries, {m['new_outcomes']} new "
          f"outcomes, new models: {', '.join(m['new_models']) or 'none'}; {d['rejected']} rows rejected")
    c = d["challenger"]
    line = f"challenger P-AUCCC {c['p_auccc']:.4f} (mean AUC {c['mean_auc']:.4f})"
    if "champion" in d:
        o = d["champion"]
        line += f" vs champion {o['version']} {o['p_auccc']:.4f} (mean AUC {o['mean_auc']:.4f})"
    print(line)
    print(("promoted: champion.json now points at " + d["model"]) if run.promoted else
          "not promoted: the champion stays")
