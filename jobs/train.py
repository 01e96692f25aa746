"""Stage ``train``: SharedTrunkNet on Ray Train (data-parallel), tuned with Optuna.

1. Load the dataset and the features; split train / val (the dataset's val split, else a seeded
   share of train); profile the feature columns on train (Fisher J), as ``select-layers`` does.
2. Optuna (TPE, seeded) searches learning rate, weight decay, widths, dropout, pooling, the number
   of top-J columns concatenated and the PCA size; each trial is one ``TorchTrainer.fit``.
3. The best setting is trained with ``train.seeds`` seeds in one ``TorchTrainer.fit``; the best
   ``train.keep`` by validation loss form the ensemble, saved as safetensors + manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router_core.artifacts import member_state, save_trunk
from router_core.config import AppConfig
from router_core.dataset import load_dataset, outcome_matrix
from router_core.errors import DataError
from router_core.features import load_features, read_manifest
from router_core.importers import hash_split
from router_core.model import Preprocessor, TrainParams
from router_core.probes import layer_profile
from router_core.storage import join

from .common import storage_from
from .runtime import code_version, ensure_ray

log = logging.getLogger(__name__)

SEARCH_SPACE = {
    "lr": (1e-4, 3e-3),
    "weight_decay": (1e-6, 1e-3),
    "width1": [128, 256, 512],
    "width2": [64, 128],
    "dropout": (0.0, 0.5),
    "pooling": ["mean", "last", "both"],
    "pca_dim": [0, 64, 128, 256],  # 0 = no PCA
}


def _worker_loop(config: dict) -> None:
    """Runs on every Ray Train worker: fit one net per seed on this worker's slice of each batch."""
    import ray
    import ray.train
    import ray.train.torch
    from safetensors.numpy import save_file

    from router_core.model import TrainParams, fit_trunk

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    x_tr, s_tr, x_va, s_va = ray.get(config["data"])
    params = TrainParams(**config["params"])
    wrap = (lambda net: ray.train.torch.prepare_model(net)) if world > 1 else None
    losses, states = [], {}
    for seed in config["seeds"]:
        net, val, epochs = fit_trunk(x_tr, s_tr, x_va, s_va, params, seed, rank, world, wrap)
        losses.append(val)
        for k, v in net.state_dict().items():
            states[f"seed{seed}.{k}"] = v.detach().cpu().numpy()
    metrics = {"val_loss": float(np.min(losses)), "val_losses": json.dumps(losses)}
    if rank == 0:
        with tempfile.TemporaryDirectory() as d:
            save_file(states, str(Path(d) / "members.safetensors"))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
    else:
        ray.train.report(metrics)


@dataclass
class TrainRun:
    out: str
    manifest: dict
    seconds: float


def _split_masks(queries, cfg: AppConfig) -> tuple[np.ndarray, np.ndarray]:
    splits = queries.column("split").to_pylist()
    qids = queries.column("query_id").to_pylist()
    has_val = "val" in splits
    train, val = [], []
    for q, s in zip(qids, splits):
        if s == "train" and not has_val:
            v = hash_split(q, cfg.train.seed, cfg.train.val_frac, 0.0) == "val"
            train.append(not v)
            val.append(v)
        else:
            train.append(s == "train")
            val.append(s == "val")
    return np.array(train), np.array(val)


def _fit(cfg: AppConfig, data_ref, params: TrainParams, seeds: list[int], run_name: str):
    import ray.train
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    with tempfile.TemporaryDirectory() as store:
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"data": data_ref, "params": params.__dict__, "seeds": seeds},
            scaling_config=ray.train.ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                                   resources_per_worker={"CPU": tc.cpus_per_worker}),
            run_config=ray.train.RunConfig(storage_path=store, name=f"trunk-{run_name}"),
        )
        result = trainer.fit()
        if result.error:
            raise result.error
        from safetensors.numpy import load_file

        with result.checkpoint.as_directory() as d:
            states = load_file(str(Path(d) / "members.safetensors"))
        return result.metrics, states


def run_train(cfg: AppConfig, data: str, features: str, out: str) -> TrainRun:
    import optuna
    import ray

    from router_core.model import SharedTrunkNet

    t0 = time.perf_counter()
    tc = cfg.train
    storage = storage_from(cfg)
    ds = load_dataset(storage, data)
    fman = read_manifest(storage, features)
    fs = load_features(storage, features, ds.queries, fman["columns"])
    if not fs.present.all():
        log.warning("train: %d queries have no features and are left out", int((~fs.present).sum()))
    tr_mask, va_mask = _split_masks(ds.queries, cfg)
    tr_mask &= fs.present
    va_mask &= fs.present
    if tr_mask.sum() < 10 or va_mask.sum() < 5:
        raise DataError(f"{data}: too few training ({tr_mask.sum()}) or validation ({va_mask.sum()}) queries")
    targets = ds.pool.names
    qids = ds.queries.column("query_id").to_pylist()
    scores = outcome_matrix(ds.outcomes, qids, targets)
    profile = layer_profile({c: fs.columns[c][tr_mask] for c in fman["columns"]}, scores[tr_mask], targets,
                            cfg.select.pca_dim, cfg.select.eps)
    ranked = [r["column"] for r in sorted(profile, key=lambda r: -r["fisher_mean"])]
    ensure_ray(cfg)

    def design(p: dict) -> tuple[list[str], Preprocessor, tuple]:
        pool = ranked if p["pooling"] == "both" else [c for c in ranked if c.startswith(p["pooling"] + "_")]
        cols = pool[: p["n_layers"]]
        x = np.concatenate([fs.columns[c] for c in cols], axis=1)
        pre = Preprocessor(pca_dim=p["pca_dim"] or None).fit(x[tr_mask])
        arrays = (pre.transform(x[tr_mask]), scores[tr_mask], pre.transform(x[va_mask]), scores[va_mask])
        return cols, pre, arrays

    def params_of(p: dict) -> TrainParams:
        return TrainParams(lr=p["lr"], weight_decay=p["weight_decay"], batch_size=tc.batch_size,
                           max_epochs=tc.max_epochs, patience=tc.patience,
                           widths=(p["width1"], p["width2"]), dropouts=(p["dropout"], p["dropout"] * 2 / 3))

    def objective(trial: "optuna.Trial") -> float:
        p = {
            "lr": trial.suggest_float("lr", *SEARCH_SPACE["lr"], log=True),
            "weight_decay": trial.suggest_float("weight_decay", *SEARCH_SPACE["weight_decay"], log=True),
            "width1": trial.suggest_categorical("width1", SEARCH_SPACE["width1"]),
            "width2": trial.suggest_categorical("width2", SEARCH_SPACE["width2"]),
            "dropout": trial.suggest_float("dropout", *SEARCH_SPACE["dropout"]),
            "pooling": trial.suggest_categorical("pooling", SEARCH_SPACE["pooling"]),
            "n_layers": trial.suggest_int("n_layers", 1, tc.max_layers),
            "pca_dim": trial.suggest_categorical("pca_dim", SEARCH_SPACE["pca_dim"]),
        }
        _, _, arrays = design(p)
        metrics, _ = _fit(cfg, ray.put(arrays), params_of(p), [tc.seed], f"trial{trial.number}")
        log.info("train: trial %d/%d val_loss %.4f %s", trial.number + 1, tc.n_trials, metrics["val_loss"], p)
        return metrics["val_loss"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=tc.seed))
    # The reference setting first, so the search can only improve on it.
    study.enqueue_trial({"lr": 1e-3, "weight_decay": 1e-4, "width1": 256, "width2": 128, "dropout": 0.3,
                         "pooling": "mean", "n_layers": 1, "pca_dim": 0})
    study.optimize(objective, n_trials=tc.n_trials)
    best = dict(study.best_params)
    cols, pre, arrays = design(best)
    params = params_of(best)
    seeds = [tc.seed + 1000 + i for i in range(tc.seeds)]
    metrics, states = _fit(cfg, ray.put(arrays), params, seeds, "ensemble")
    losses = json.loads(metrics["val_losses"])
    kept = [seeds[i] for i in np.argsort(losses)[: tc.keep]]
    nets = []
    for s in kept:
        net = SharedTrunkNet(pre.out_dim, len(targets), params.widths, params.dropouts)
        net.load_state_dict(member_state(states, f"seed{s}."))
        nets.append(net)

    fingerprint = hashlib.sha256(json.dumps({
        "queries": sorted(zip(qids, ds.queries.column("split").to_pylist()), key=lambda t: t[0]),
        "n_outcomes": ds.outcomes.num_rows}, default=str).encode()).hexdigest()
    manifest = {
        "kind": "prefill-router-model",
        "router": "prefill_trunk",
        "targets": targets,
        "pool": ds.pool.model_dump(exclude_none=True),
        "encoder": fman["encoder"],
        "features_settings_key": fman["settings_key"],
        "columns": cols,
        "layers": [{"column": r["column"], "fisher_mean": r["fisher_mean"], "d_eff": r["d_eff"]}
                   for r in profile if r["column"] in cols],
        "preprocess": {"standardise": True, "pca_dim": best["pca_dim"] or None},
        "widths": list(params.widths),
        "dropouts": list(params.dropouts),
        "best_params": best,
        "trials": [{"number": t.number, "params": t.params, "val_loss": t.value} for t in study.trials],
        "ensemble": {"seeds": seeds, "val_losses": losses, "kept": kept},
        "n_train": int(tr_mask.sum()),
        "n_val": int(va_mask.sum()),
        "data_fingerprint": fingerprint,
        "code_version": code_version(),
    }
    manifest = save_trunk(storage, join(out, "prefill_trunk"), pre, nets, manifest)
    return TrainRun(out, manifest, time.perf_counter() - t0)


def print_train(run: TrainRun) -> None:
    m = run.manifest
    e = m["ensemble"]
    print(f"trained {join(run.out, 'prefill_trunk')} in {run.seconds:.0f} s")
    print(f"  data:     {m['n_train']} train / {m['n_val']} val queries, {len(m['targets'])} targets")
    print(f"  features: {', '.join(m['columns'])} (PCA {m['preprocess']['pca_dim'] or 'off'})")
    best = min(t["val_loss"] for t in m["trials"])
    print(f"  optuna:   {len(m['trials'])} trials, best val loss {best:.4f}: {m['best_params']}")
    print(f"  ensemble: kept {len(e['kept'])} of {len(e['seeds'])} seeds, val losses "
          f"{', '.join(f'{v:.4f}' for v in sorted(e['val_losses'])[: len(e['kept'])])}")
