"""Stage ``select-layers``: profile every (pooling, layer) column on the training split."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np

from router_core.config import AppConfig
from router_core.dataset import load_dataset, outcome_matrix
from router_core.errors import DataError
from router_core.features import load_features, read_manifest
from router_core.probes import layer_profile, select_columns
from router_core.reporting import plot_profile
from router_core.storage import join

from .common import format_table, storage_from

log = logging.getLogger(__name__)


@dataclass
class SelectRun:
    out: str
    profile: list[dict]
    selected: list[str]
    n_train: int
    targets: list[str]
    seconds: float


def run_select_layers(cfg: AppConfig, data: str, features: str, out: str) -> SelectRun:
    t0 = time.perf_counter()
    storage = storage_from(cfg)
    ds = load_dataset(storage, data)
    train = ds.queries.filter(np.array([s == "train" for s in ds.queries.column("split").to_pylist()]))
    if train.num_rows == 0:
        raise DataError(f"{data}: no queries with split 'train'")
    manifest = read_manifest(storage, features)
    cols = [c for c in manifest["columns"]
            if cfg.select.pooling is None or c.rpartition("_")[0] in cfg.select.pooling]
    fs = load_features(storage, features, train, cols)
    if not fs.present.all():
        log.warning("select-layers: %d of %d training queries have no features; left out",
                    int((~fs.present).sum()), train.num_rows)
    targets = ds.pool.names
    qids = [q for q, p in zip(train.column("query_id").to_pylist(), fs.present) if p]
    scores = outcome_matrix(ds.outcomes, qids, targets)
    x = {c: fs.columns[c][fs.present] for c in cols}
    cv = cfg.select.cv_folds if cfg.select.strategy == "cv_auc" else 0
    profile = layer_profile(x, scores, targets, cfg.select.pca_dim, cfg.select.eps, cv)
    selected = select_columns(profile, cfg.select.strategy, cfg.select.k)
    doc = {"dataset": data, "features": features, "encoder": manifest["encoder"], "n_train": len(qids),
           "targets": targets, "strategy": cfg.select.strategy, "k": cfg.select.k, "pca_dim": cfg.select.pca_dim,
           "selected": selected, "profile": profile}
    storage.write_text(join(out, "layer_profile.json"), json.dumps(doc, indent=2))
    storage.write_bytes(join(out, "layer_profile.png"), plot_profile(profile))
    return SelectRun(out, profile, selected, len(qids), targets, time.perf_counter() - t0)


def print_select(run: SelectRun, top: int = 10) -> None:
    print(f"layer profile of {len(run.profile)} columns x {len(run.targets)} targets on {run.n_train} "
          f"training queries ({run.seconds:.1f} s)")
    best = sorted(run.profile, key=lambda r: -r["fisher_mean"])[:top]
    cv = "cv_auc_mean" in run.profile[0]
    print(format_table(["column", "mean J", "d_eff", "d_eff raw"] + (["cv AUC"] if cv else []),
                       [[r["column"], r["fisher_mean"], r["d_eff"], r["d_eff_raw"]] + ([r["cv_auc_mean"]] if cv else [])
                        for r in best]))
    print(f"selected: {', '.join(run.selected)}")
    print(f"wrote {join(run.out, 'layer_profile.json')} and layer_profile.png")
