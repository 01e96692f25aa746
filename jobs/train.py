"""Stage ``train``: the router bundle (router_core.training) with its members fitted on Ray Train.

Reads the dataset and its prefill features, computes the sentence embeddings of the semantic
baselines through the extraction job's cache (MODEL/semantic_features unless
``baselines.semantic_features`` names another), fits every router and writes them under MODEL with
the index MODEL/manifest.json.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from router_core.config import AppConfig
from router_core.dataset import load_dataset
from router_core.features import load_features, read_manifest
from router_core.model_index import FeatureRef, ModelIndex
from router_core.selection import PRIORS, does_not_pay_line, explain, fallback_line, operating_line
from router_core.storage import join
from router_core.training import Bundle, fit_bundle, fit_in_process, save_bundle

from .train_workers import ray_train_fit
from .common import storage_from
from .encoding import semantic_embeddings
from .runtime import code_version

log = logging.getLogger(__name__)


@dataclass
class TrainRun:
    out: str
    bundle: Bundle
    index: ModelIndex
    seconds: float


def run_train(cfg: AppConfig, data: str, features: str, out: str, fit=None) -> TrainRun:
    """``fit``: the members' fit (router_core.training.Fit); None = data-parallel on Ray Train, or in this
    process with ``train.in_process``."""
    t0 = time.perf_counter()
    storage = storage_from(cfg)
    ds = load_dataset(storage, data)
    fman = read_manifest(storage, features)
    fs = load_features(storage, features, ds.queries, fman["columns"])
    if not fs.present.all():
        log.warning("train: %d queries have no features and are left out", int((~fs.present).sum()))
    sem_uri = cfg.baselines.semantic_features or join(out, "semantic_features")
    t = time.perf_counter()
    sem, sem_present, sman = semantic_embeddings(cfg, data, sem_uri, ds.queries)
    sem_seconds = time.perf_counter() - t
    fit = fit or (fit_in_process if cfg.train.in_process else ray_train_fit(cfg, storage))
    sem_in_process = cfg.baselines.in_process
    sem_fit = (None if sem_in_process is None or sem_in_process == cfg.train.in_process  # None: the trunks' fit
               else fit_in_process if sem_in_process else ray_train_fit(cfg, storage))
    bundle = fit_bundle(cfg, fit, ds, fs.columns, sem, fs.present & sem_present, fman, sman,
                        code_version(), sem_fit=sem_fit)
    bundle.seconds = {"semantic_embeddings": sem_seconds, **bundle.seconds,
                      "total": time.perf_counter() - t0}
    refs = {"prefill": FeatureRef(uri=features, settings_key=fman["settings_key"], encoder=fman["encoder"]),
            "semantic": FeatureRef(uri=sem_uri, settings_key=sman["settings_key"], encoder=sman["encoder"],
                                   column=sman["columns"][0])}
    config = {"train": cfg.train.model_dump(), "baselines": cfg.baselines.model_dump(), "select": cfg.select.model_dump()}
    index = save_bundle(storage, out, bundle, refs, {"dataset": data, "features": features, "config": config})
    return TrainRun(out, bundle, index, time.perf_counter() - t0)


def print_train(run: TrainRun) -> None:
    trunk, m = run.bundle.routers["prefill_trunk"]
    e, c = m["ensemble"], m["calibration"]
    sem = run.bundle.routers["semantic_mlp"][1]["calibration"]
    common = run.bundle.common
    print(f"trained {len(run.index.routers)} routers under {run.out} in {run.seconds:.0f} s "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in run.index.seconds.items() if k != 'total')})")
    print(f"  data:     {common['n_train']} train / {common['n_val']} val queries, {len(common['targets'])} targets")
    print(f"  prefill_trunk: {', '.join(trunk.columns)} (PCA {m['preprocess']['pca_dim'] or 'off'})")
    best = min(t["val_loss"] for t in m["trials"])
    print(f"  optuna:   {len(m['trials'])} trials, best val loss {best:.4f}: {m['best_params']}")
    print(f"  ensemble: kept {len(e['kept'])} of {len(e['seeds'])} seeds, val losses "
          f"{', '.join(f'{v:.4f}' for v in sorted(e['val_losses'])[: len(e['kept'])])}")
    print(f"  temperature {c['temperature']:.3f}: val ECE {c['val_ece_before']:.4f} -> {c['val_ece_after']:.4f} "
          f"(semantic_mlp: {sem['temperature']:.3f}, {sem['val_ece_before']:.4f} -> {sem['val_ece_after']:.4f})")
    print(f"  routers:  {', '.join(run.index.routers)}")
    sel, op = run.index.selection, run.index.operating_point
    if sel:
        cands = sorted(((k, v) for k, v in sel["candidates"].items() if v.get("servable", True)),
                       key=lambda kv: -kv[1]["val_p_auccc"])
        rows = sel.get("rows", {"kind": "validation"})
        on = f"{rows['n']} {rows['kind']}" if "n" in rows else rows["kind"]
        print("  serving:  " + f"{run.index.serve} (P-AUCCC on {on} rows, cross-validated: "
              + ", ".join(f"{k} {v['val_p_auccc']:.4f}" for k, v in cands[:6]) + ")")
        print(f"  why:      {explain(sel, run.index.serve)}")
        single = does_not_pay_line(sel, run.index.serve, run.index.best_single, (op or {}).get("tau", 0.0))
        if single:
            print(f"  {single}")
        elif run.index.serve in PRIORS and not sel.get("fallback"):
            print("  no learned router scores above the prior on held-out rows: route serves it, looking up each "
                  "query's task and encoding nothing")
    if op:
        print(f"  operating point: {operating_line(op, run.index.best_single)}")
        careful = fallback_line(op, run.index.best_single, run.index.serve)
        if careful:
            print(f"  {careful}")
