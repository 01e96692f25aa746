"""Stage ``train``: SharedTrunkNet on Ray Train (data-parallel), tuned with Optuna, and its baselines.

1. Load the dataset and the features; split train / val (the dataset's val split, else a seeded
   share of train); profile the feature columns on train (Fisher J), as ``select-layers`` does.
2. Optuna (TPE, seeded) searches learning rate, weight decay, widths, dropout, pooling, which
   columns (top-n by mean J, or each target's best) and the PCA size; each trial is one
   ``TorchTrainer.fit``.
3. The best setting is trained with ``train.seeds`` seeds in one ``TorchTrainer.fit``; the best
   ``train.keep`` by validation loss form the ensemble; a temperature is fitted on val.
4. The baselines: sentence embeddings (all-MiniLM-L6-v2) through the extraction job, a semantic
   SharedTrunkNet tuned the same way, semantic kNN, per-target logistic regression on each
   target's best prefill column, the task prior, fixed choices, random and the oracle.
5. Everything is saved under MODEL: ``<router>/`` folders (safetensors + manifest), the layer
   profile, and ``manifest.json`` indexing them.
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

from router_core import metrics as M
from router_core.artifacts import member_state
from router_core.config import AppConfig
from router_core.dataset import load_dataset, outcome_matrix
from router_core.errors import DataError, RouterError
from router_core.evaluation import call_costs
from router_core.features import load_features, read_manifest
from router_core.importers import hash_split
from router_core.model import Preprocessor, SharedTrunkNet, TrainParams, ensemble_proba, predict_logits
from router_core.probes import layer_profile, select_columns
from router_core.routers import (ConstantRouter, OracleRouter, PrefillLogReg, RandomRouter, Router, RouterInputs,
                                 SemanticKNN, TaskPrior, TrunkRouter, bce, fit_temperature, save_router)
from router_core.storage import is_s3, join

from .common import storage_from
from .runtime import code_version, ensure_ray

log = logging.getLogger(__name__)

SEARCH_SPACE = {
    "lr": (1e-4, 3e-3),
    "weight_decay": (1e-6, 1e-3),
    "width1": [128, 256, 512],
    "width2": [64, 128],
    "dropout": (0.0, 0.5),
    "pca_dim": [0, 64, 128, 256],  # 0 = no PCA
    # prefill only: the pooling ("all" = every pooling in the features), and which columns
    "selection": ["top_mean", "per_target"],
}
REFERENCE = {"lr": 1e-3, "weight_decay": 1e-4, "width1": 256, "width2": 128, "dropout": 0.3, "pca_dim": 0}


def _worker_loop(config: dict) -> None:
    """Runs on every Ray Train worker: fit one net per seed on this worker's slice of each batch."""
    import ray
    import ray.train
    import ray.train.torch
    from safetensors.numpy import save_file

    from router_core.model import TrainParams, fit_trunk

    from safetensors.numpy import load_file

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    x_tr, s_tr, x_va, s_va = ray.get(config["data"])
    params = TrainParams(**config["params"])
    wrap = (lambda net: ray.train.torch.prepare_model(net)) if world > 1 else None
    losses, states = [], {}
    # A restarted worker group (a worker was lost) resumes after the last member checkpointed.
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            states = dict(load_file(str(Path(d) / "members.safetensors")))
            losses = json.loads((Path(d) / "losses.json").read_text())
    for seed in config["seeds"][len(losses):]:
        net, val, epochs = fit_trunk(x_tr, s_tr, x_va, s_va, params, seed, rank, world, wrap)
        losses.append(val)
        for k, v in net.state_dict().items():
            states[f"seed{seed}.{k}"] = v.detach().cpu().numpy()
        metrics = {"val_loss": float(np.min(losses)), "val_losses": json.dumps(losses), "members": len(losses)}
        if rank == 0:  # one checkpoint per finished member: the members so far and their losses
            with tempfile.TemporaryDirectory() as d:
                save_file(states, str(Path(d) / "members.safetensors"))
                (Path(d) / "losses.json").write_text(json.dumps(losses))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


@dataclass
class TrainRun:
    out: str
    manifest: dict  # the prefill_trunk's
    seconds: float
    index: dict  # MODEL/manifest.json
    semantic_calibration: dict


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
    from ray.train.torch import TorchConfig, TorchTrainer

    tc = cfg.train
    with tempfile.TemporaryDirectory() as tmp:
        store, fs = tc.storage_path or tmp, None
        if is_s3(store):  # through our S3 settings (endpoint, region), as every other read and write
            store, fs = store[len("s3://"):], storage_from(cfg).s3_filesystem()
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"data": data_ref, "params": params.__dict__, "seeds": seeds},
            torch_config=TorchConfig(timeout_s=tc.collective_timeout_s),  # a lost peer fails the step, not hangs it
            scaling_config=ray.train.ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                                                   resources_per_worker={"CPU": tc.cpus_per_worker,
                                                                         **tc.worker_resources}),
            run_config=ray.train.RunConfig(storage_path=store, storage_filesystem=fs, name=f"trunk-{run_name}",
                                           failure_config=ray.train.FailureConfig(max_failures=tc.max_failures)),
        )
        try:
            result = trainer.fit()
            error = result.error
        except Exception as e:  # noqa: BLE001 - Ray Train raises its TrainingFailedError here
            error = e
        if error is not None:
            raise TrainingFailed(f"training {run_name} failed after {tc.max_failures} restart(s) of its workers "
                                 f"({_first_line(error)}); no model was written") from None
        from safetensors.numpy import load_file

        with result.checkpoint.as_directory() as d:
            states = load_file(str(Path(d) / "members.safetensors"))
            losses = json.loads((Path(d) / "losses.json").read_text())
        if len(losses) != len(seeds):
            raise TrainingFailed(f"training {run_name} ended with {len(losses)} of {len(seeds)} members; "
                                 "no model was written")
        return dict(result.metrics, val_losses=json.dumps(losses)), states


class TrainingFailed(RouterError):
    """Ray Train could not finish (workers lost more often than train.max_failures allows)."""


def _first_line(e: BaseException) -> str:
    lines = [x for x in str(e).strip().splitlines() if x.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]


def _params_of(p: dict, tc) -> TrainParams:
    return TrainParams(lr=p["lr"], weight_decay=p["weight_decay"], batch_size=tc.batch_size,
                       max_epochs=tc.max_epochs, patience=tc.patience,
                       widths=(p["width1"], p["width2"]), dropouts=(p["dropout"], p["dropout"] * 2 / 3))


def _common_space(trial) -> dict:
    return {
        "lr": trial.suggest_float("lr", *SEARCH_SPACE["lr"], log=True),
        "weight_decay": trial.suggest_float("weight_decay", *SEARCH_SPACE["weight_decay"], log=True),
        "width1": trial.suggest_categorical("width1", SEARCH_SPACE["width1"]),
        "width2": trial.suggest_categorical("width2", SEARCH_SPACE["width2"]),
        "dropout": trial.suggest_float("dropout", *SEARCH_SPACE["dropout"]),
        "pca_dim": trial.suggest_categorical("pca_dim", SEARCH_SPACE["pca_dim"]),
    }


@dataclass
class Tuned:
    router: TrunkRouter
    best_params: dict
    trials: list[dict]
    ensemble: dict
    calibration: dict


def _tune_trunk(cfg: AppConfig, name: str, space, design, reference: dict, n_trials: int, tr_mask, va_mask,
                scores, targets) -> Tuned:
    """Optuna over ``space(trial)``; the best setting retrained as the seed ensemble; temperature on val.

    ``design(p)`` -> (columns, x): the (n, d) inputs of a setting; a Preprocessor is fitted on train.
    """
    import optuna
    import ray

    tc = cfg.train

    def arrays(p):
        cols, x = design(p)
        pre = Preprocessor(pca_dim=p["pca_dim"] or None).fit(x[tr_mask])
        return cols, pre, (pre.transform(x[tr_mask]), scores[tr_mask], pre.transform(x[va_mask]), scores[va_mask])

    def objective(trial) -> float:
        p = space(trial)
        _, _, data = arrays(p)
        metrics, _ = _fit(cfg, ray.put(data), _params_of(p, tc), [tc.seed], f"{name}-trial{trial.number}")
        log.info("train %s: trial %d/%d val_loss %.4f %s", name, trial.number + 1, n_trials, metrics["val_loss"], p)
        return metrics["val_loss"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=tc.seed))
    study.enqueue_trial(reference)  # the reference setting first: the search can only improve on it
    study.optimize(objective, n_trials=n_trials)
    best = dict(study.best_params)
    cols, pre, data = arrays(best)
    params = _params_of(best, tc)
    seeds = [tc.seed + 1000 + i for i in range(tc.seeds)]
    metrics, states = _fit(cfg, ray.put(data), params, seeds, f"{name}-ensemble")
    losses = json.loads(metrics["val_losses"])
    kept = [seeds[i] for i in np.argsort(losses, kind="stable")[: tc.keep]]
    nets = []
    for s in kept:
        net = SharedTrunkNet(pre.out_dim, len(targets), params.widths, params.dropouts)
        net.load_state_dict(member_state(states, f"seed{s}."))
        nets.append(net.eval())
    router = TrunkRouter(name, cols, pre, nets)
    logits_va = predict_logits(nets, data[2])
    calibration = {"temperature": 1.0, "val_ece_before": M.ece(ensemble_proba(logits_va, 1.0), data[3]),
                   "val_bce_before": bce(ensemble_proba(logits_va, 1.0), data[3])}
    if tc.temperature:
        router.temperature = fit_temperature(logits_va, data[3])
    calibration.update(temperature=router.temperature,
                       val_ece_after=M.ece(ensemble_proba(logits_va, router.temperature), data[3]),
                       val_bce_after=bce(ensemble_proba(logits_va, router.temperature), data[3]))
    trials = [{"number": t.number, "params": t.params, "val_loss": t.value} for t in study.trials]
    return Tuned(router, best, trials, {"seeds": seeds, "val_losses": losses, "kept": kept}, calibration)


def semantic_extract_config(cfg: AppConfig) -> AppConfig:
    """The extraction settings of the sentence encoder: its last layer, mean-pooled, no template."""
    b = cfg.baselines
    ext = cfg.extract.model_copy(update={
        "encoder": b.semantic_encoder, "revision": None, "chat_template": False, "pooling": ["mean"], "layers": [-1],
        "max_length": b.semantic_max_length, "truncation_side": "left", "prefix_sharing": False})
    return cfg.model_copy(update={"extract": ext})


def semantic_embeddings(cfg: AppConfig, data: str, uri: str, queries) -> tuple[np.ndarray, np.ndarray, dict]:
    """(n, d) sentence embeddings of ``queries`` (computed for the texts the cache lacks), presence, manifest."""
    from .extract import run_extract

    run = run_extract(semantic_extract_config(cfg), data, uri)
    log.info("train: semantic embeddings in %s: %d reused, %d computed (%.0f s)", uri, run.reused, run.extracted,
             run.seconds)
    fman = read_manifest(storage_from(cfg), uri)
    col = fman["columns"][0]
    fs = load_features(storage_from(cfg), uri, queries, [col])
    return fs.columns[col], fs.present, fman


def run_train(cfg: AppConfig, data: str, features: str, out: str) -> TrainRun:
    t0 = time.perf_counter()
    tc, bc = cfg.train, cfg.baselines
    storage = storage_from(cfg)
    ds = load_dataset(storage, data)
    fman = read_manifest(storage, features)
    fs = load_features(storage, features, ds.queries, fman["columns"])
    if not fs.present.all():
        log.warning("train: %d queries have no features and are left out", int((~fs.present).sum()))
    tr_mask, va_mask = _split_masks(ds.queries, cfg)
    targets = ds.pool.names
    qids = ds.queries.column("query_id").to_pylist()
    scores = outcome_matrix(ds.outcomes, qids, targets)
    seconds: dict[str, float] = {}

    ensure_ray(cfg)
    sem_uri = bc.semantic_features or join(out, "semantic_features")
    t = time.perf_counter()
    sem, sem_present, sem_manifest = semantic_embeddings(cfg, data, sem_uri, ds.queries)
    seconds["semantic_embeddings"] = time.perf_counter() - t
    tr_mask &= fs.present & sem_present
    va_mask &= fs.present & sem_present
    if tr_mask.sum() < 10 or va_mask.sum() < 5:
        raise DataError(f"{data}: too few training ({tr_mask.sum()}) or validation ({va_mask.sum()}) queries")

    t = time.perf_counter()
    profile = layer_profile({c: fs.columns[c][tr_mask] for c in fman["columns"]}, scores[tr_mask], targets,
                            cfg.select.pca_dim, cfg.select.eps)
    seconds["layer_profile"] = time.perf_counter() - t
    poolings = sorted({r["pooling"] for r in profile})
    pooling_choices = poolings + (["all"] if len(poolings) > 1 else [])

    def prefill_space(trial) -> dict:
        p = _common_space(trial)
        p["pooling"] = trial.suggest_categorical("pooling", pooling_choices)
        p["selection"] = trial.suggest_categorical("selection", SEARCH_SPACE["selection"])
        p["n_layers"] = trial.suggest_int("n_layers", 1, tc.max_layers)
        return p

    tasks = ds.queries.column("task").to_pylist()
    has_tasks = any(x is not None for x in tasks)
    tr_idx = np.nonzero(tr_mask)[0]
    prior = TaskPrior.fit([tasks[i] for i in tr_idx], scores[tr_mask]) if has_tasks else None
    extra = {"semantic": sem}
    if "task_prior" in tc.extra_inputs:
        if prior is None:
            raise DataError(f"{data}: train.extra_inputs has task_prior but the queries have no task")
        extra["task_prior"] = prior.predict_proba(RouterInputs(n=len(qids), tasks=tasks))

    def prefill_design(p: dict) -> tuple[list[str], np.ndarray]:
        rows = [r for r in profile if p["pooling"] == "all" or r["pooling"] == p["pooling"]]
        if p.get("selection") == "per_target":
            cols = select_columns(rows, "per_target")
        else:
            cols = select_columns(rows, "top_k_mean", p["n_layers"])
        cols = cols + list(tc.extra_inputs)
        return cols, np.concatenate([fs.columns[c] if c in fs.columns else extra[c] for c in cols], axis=1)

    reference = dict(REFERENCE, pooling=poolings[0], selection="top_mean", n_layers=1)
    t = time.perf_counter()
    trunk = _tune_trunk(cfg, "prefill_trunk", prefill_space, prefill_design, reference, tc.n_trials,
                        tr_mask, va_mask, scores, targets)
    seconds["prefill_trunk"] = time.perf_counter() - t
    distilled = None
    if tc.distil_width:
        t = time.perf_counter()
        _, x = prefill_design(trunk.best_params)
        distilled = trunk.router.distil(x[tr_mask], x[va_mask], tc.distil_width, tc.seed, tc.distil_mix,
                                        tc.max_epochs, tc.patience)
        inputs_va = RouterInputs(n=int(va_mask.sum()), prefill={c: fs.columns[c][va_mask] for c in fs.columns},
                                 prior=extra["task_prior"][va_mask] if "task_prior" in extra else None,
                                 semantic=sem[va_mask])
        distilled[1].update(val_bce_labels=bce(distilled[0].predict_proba(inputs_va), scores[va_mask]),
                            val_bce_labels_teacher=bce(trunk.router.predict_proba(inputs_va), scores[va_mask]))
        seconds["prefill_trunk_distilled"] = time.perf_counter() - t
        log.info("train: prefill_trunk_distilled %s", distilled[1])
    t = time.perf_counter()
    sem_mlp = _tune_trunk(cfg, "semantic_mlp", _common_space, lambda p: (["semantic"], sem), REFERENCE,
                          bc.semantic_trials or tc.n_trials, tr_mask, va_mask, scores, targets)
    seconds["semantic_mlp"] = time.perf_counter() - t

    t = time.perf_counter()
    knn, knn_info = SemanticKNN.fit(sem[tr_mask], scores[tr_mask], sem[va_mask], scores[va_mask], bc.knn_k)
    per_target = [max(profile, key=lambda r: r["fisher"][tg])["column"] for tg in targets]
    logreg, logreg_info = PrefillLogReg.fit(per_target, {c: fs.columns[c][tr_mask] for c in set(per_target)},
                                            scores[tr_mask], {c: fs.columns[c][va_mask] for c in set(per_target)},
                                            scores[va_mask], bc.logreg_c)
    mean_cost = _mean_train_cost(ds, qids, targets, tr_mask)
    baselines: dict[str, tuple[Router, dict]] = {
        "prefill_logreg": (logreg, dict(logreg_info, features_settings_key=fman["settings_key"],
                                         encoder=fman["encoder"])),
        "semantic_knn": (knn, dict(knn_info, features_settings_key=sem_manifest["settings_key"],
                                   encoder=sem_manifest["encoder"])),
        "best_single": (ConstantRouter.best_single(scores[tr_mask]), {}),
        "cheapest": (ConstantRouter.one_target("cheapest", int(np.argmin(mean_cost)), len(targets)), {}),
        "most_expensive": (ConstantRouter.one_target("most_expensive", int(np.argmax(mean_cost)), len(targets)), {}),
        "random": (RandomRouter(len(targets), bc.random_seed), {}),
        "oracle": (OracleRouter(), {}),
    }
    if prior is not None:
        baselines["task_prior"] = (prior, {})
    seconds["other_baselines"] = time.perf_counter() - t

    fingerprint = hashlib.sha256(json.dumps({
        "queries": sorted(zip(qids, ds.queries.column("split").to_pylist()), key=lambda t: t[0]),
        "n_outcomes": ds.outcomes.num_rows}, default=str).encode()).hexdigest()
    common = {"targets": targets, "pool": ds.pool.model_dump(exclude_none=True), "data_fingerprint": fingerprint,
              "n_train": int(tr_mask.sum()), "n_val": int(va_mask.sum()), "code_version": code_version()}
    folders = {}
    m_trunk = save_router(storage, join(out, "prefill_trunk"), trunk.router, dict(
        common, kind="prefill-router-model", encoder=fman["encoder"], features_settings_key=fman["settings_key"],
        extra_inputs=list(tc.extra_inputs),
        layers=[{"column": r["column"], "fisher_mean": r["fisher_mean"], "d_eff": r["d_eff"]}
                for r in profile if r["column"] in trunk.router.columns],
        preprocess={"standardise": True, "pca_dim": trunk.best_params["pca_dim"] or None},
        best_params=trunk.best_params, trials=trunk.trials, ensemble=trunk.ensemble, calibration=trunk.calibration))
    folders["prefill_trunk"] = "prefill_trunk"
    if distilled is not None:
        save_router(storage, join(out, "prefill_trunk_distilled"), distilled[0], dict(
            common, kind="prefill-router-model", encoder=fman["encoder"], features_settings_key=fman["settings_key"],
            extra_inputs=list(tc.extra_inputs), distillation=distilled[1]))
        folders["prefill_trunk_distilled"] = "prefill_trunk_distilled"
    save_router(storage, join(out, "semantic_mlp"), sem_mlp.router, dict(
        common, kind="prefill-router-model", encoder=sem_manifest["encoder"],
        features_settings_key=sem_manifest["settings_key"], best_params=sem_mlp.best_params, trials=sem_mlp.trials,
        ensemble=sem_mlp.ensemble, calibration=sem_mlp.calibration))
    folders["semantic_mlp"] = "semantic_mlp"
    for name, (router, extra) in baselines.items():
        save_router(storage, join(out, name), router, dict(common, kind="prefill-router-model", **extra))
        folders[name] = name
    storage.write_text(join(out, "layer_profile.json"), json.dumps(
        {"dataset": data, "features": features, "n_train": int(tr_mask.sum()), "targets": targets,
         "pca_dim": cfg.select.pca_dim, "profile": profile}, indent=2))
    seconds["total"] = time.perf_counter() - t0
    out_tok = outcome_matrix(ds.outcomes, qids, targets, "output_tokens")[tr_mask]
    # `default` is what evaluate and retrain compare; `serve` is what route uses unless told.
    index = dict(common, kind="prefill-router-models", default="prefill_trunk", routers=folders,
                 serve="prefill_trunk_distilled" if distilled is not None else "prefill_trunk",
                 best_single=targets[int(np.nanmean(scores[tr_mask], axis=0).argmax())],
                 output_tokens_median={t: float(np.nanmedian(c)) if np.isfinite(c).any() else 0.0
                                       for t, c in zip(targets, out_tok.T)},
                 features={"prefill": {"uri": features, "settings_key": fman["settings_key"],
                                       "encoder": fman["encoder"]},
                           "semantic": {"uri": sem_uri, "settings_key": sem_manifest["settings_key"],
                                        "encoder": sem_manifest["encoder"], "column": sem_manifest["columns"][0]}},
                 layer_profile="layer_profile.json", seconds=seconds,
                 config={"train": tc.model_dump(), "baselines": bc.model_dump(), "select": cfg.select.model_dump()})
    storage.write_text(join(out, "manifest.json"), json.dumps(index, indent=2))
    return TrainRun(out, m_trunk, time.perf_counter() - t0, index, sem_mlp.calibration)


def _mean_train_cost(ds, qids, targets, tr_mask) -> np.ndarray:
    """Mean training cost per call of each target: observed, else estimated from prices."""
    texts = ds.queries.column("text").to_pylist()
    observed = outcome_matrix(ds.outcomes, qids, targets, "cost_usd")
    out_tok = outcome_matrix(ds.outcomes, qids, targets, "output_tokens")
    costs, _ = call_costs(observed, texts, ds.pool, targets, out_tok[tr_mask])
    return np.nanmean(costs[tr_mask], axis=0)


def print_train(run: TrainRun) -> None:
    m = run.manifest
    e, c = m["ensemble"], m["calibration"]
    print(f"trained {len(run.index['routers'])} routers under {run.out} in {run.seconds:.0f} s "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in run.index['seconds'].items() if k != 'total')})")
    print(f"  data:     {m['n_train']} train / {m['n_val']} val queries, {len(m['targets'])} targets")
    print(f"  prefill_trunk: {', '.join(m['columns'])} (PCA {m['preprocess']['pca_dim'] or 'off'})")
    best = min(t["val_loss"] for t in m["trials"])
    print(f"  optuna:   {len(m['trials'])} trials, best val loss {best:.4f}: {m['best_params']}")
    print(f"  ensemble: kept {len(e['kept'])} of {len(e['seeds'])} seeds, val losses "
          f"{', '.join(f'{v:.4f}' for v in sorted(e['val_losses'])[: len(e['kept'])])}")
    print(f"  temperature {c['temperature']:.3f}: val ECE {c['val_ece_before']:.4f} -> {c['val_ece_after']:.4f} "
          f"(semantic_mlp: {run.semantic_calibration['temperature']:.3f}, "
          f"{run.semantic_calibration['val_ece_before']:.4f} -> {run.semantic_calibration['val_ece_after']:.4f})")
    print(f"  routers:  {', '.join(run.index['routers'])}")
