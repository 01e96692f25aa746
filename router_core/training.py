"""Fitting the whole router bundle: SharedTrunkNet tuned by Optuna and kept as a seed ensemble, its
distilled serving net, and every baseline, from arrays in memory.

The members are fitted by a function passed in, ``fit(data, params, seeds, name) -> (metrics,
member states)`` with ``data = (x_train, s_train, x_val, s_val)`` already preprocessed: the jobs
pass one that runs Ray Train; a test can pass a plain loop over ``model.fit_trunk``.

1. Split train / val (the dataset's val split, else a seeded share of train).
2. Optuna (TPE, seeded, the reference setting first) searches learning rate, weight decay, widths,
   dropout, PCA size and, for the prefill trunk, pooling and which columns (top-k by mean Fisher J
   or each target's best: select-layers' strategies); each trial one ``fit``.
3. The best setting is fitted with ``train.seeds`` seeds; the best ``train.keep`` by validation loss
   form the ensemble, its temperature fitted on val; ``train.distil_width`` > 0 distils it.
4. Baselines: semantic SharedTrunkNet (same search), semantic kNN, per-target logistic regression,
   task prior, best single, cheapest, most expensive, random, oracle.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .artifacts import member_state
from .config import AppConfig
from .dataset import Dataset, outcome_matrix
from .errors import DataError
from .evaluation import call_costs
from .held_out import FILE as HELD_OUT
from .held_out import to_table
from .importers import hash_split
from .lengths import LinearLengths, dataset_output_tokens, fit_output_lengths, with_linear
from .model import Preprocessor, SharedTrunkNet, TrainParams, bce, logit
from .model_index import FeatureRef, ModelIndex
from .probes import layer_profile, select_columns
from .routers import (ConstantRouter, OracleRouter, PrefillLogReg, RandomRouter, Router, RouterInputs, SemanticKNN,
                      TaskPrior, TrunkRouter, predict_any, prefill_columns, save_router)
from .selection import OperatingRule, OutOfFold, Serving, choose_serving, parts_of
from .storage import join

log = logging.getLogger(__name__)

Fit = Callable[[tuple, TrainParams, list[int], str], tuple[dict, dict]]

SEARCH_SPACE = {
    "lr": (1e-4, 3e-3),
    "weight_decay": (1e-6, 1e-3),
    "width1": [128, 256, 512],
    "width2": [64, 128],
    "dropout": (0.0, 0.5),
    "pca_dim": [0, 64, 128, 256],  # 0 = no PCA
    # prefill only: the pooling ("all" = every pooling in the features), and which columns
    "selection": ["top_k_mean", "per_target"],
}
LENGTHS_FOLDER = "output_lengths"  # MODEL/output_lengths/: the LinearLengths of the model index
REFERENCE = {"lr": 1e-3, "weight_decay": 1e-4, "width1": 256, "width2": 128, "dropout": 0.3, "pca_dim": 0}


@dataclass
class Bundle:
    """Every fitted router with the manifest fields it is saved with, and what the index needs."""

    routers: dict[str, tuple[Router, dict]]  # name -> (router, its manifest fields)
    common: dict  # fields every router's manifest and the index carry
    profile: list[dict]
    serve: str
    best_single: str
    output_tokens_median: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)
    selection: dict = field(default_factory=dict)  # router_core.selection: every candidate's validation score
    operating_point: dict = field(default_factory=dict)  # route's default threshold, chosen on held-out rows
    held_out: pa.Table | None = None  # router_core.held_out: the candidates' probabilities on those rows
    output_lengths: dict = field(default_factory=dict)  # router_core.lengths.OutputLengths, as a dict
    length_map: LinearLengths | None = None  # its map on prefill features, saved under output_lengths["prefill"]["folder"]


def fit_in_process(data: tuple, params: TrainParams, seeds: list[int], name: str) -> tuple[dict, dict]:
    """The ``Fit`` as a plain loop in this process (tests, studies): what the Ray Train workers do,
    one worker."""
    from .model import fit_trunk

    losses, states = [], {}
    for seed in seeds:
        net, val, _ = fit_trunk(data[0], data[1], data[2], data[3], params, seed, o_tr=(data[4:] or [None])[0],
                                o_va=(data[5:] or [None])[0])
        losses.append(val)
        states.update({f"seed{seed}.{k}": v.detach().cpu().numpy() for k, v in net.state_dict().items()})
    return {"val_loss": float(min(losses)), "val_losses": json.dumps(losses)}, states


def split_masks(splits: list[str | None], qids: list[str], seed: int, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) masks: the dataset's val split, else a seeded share of train."""
    has_val = "val" in splits
    train, val = [], []
    for q, s in zip(qids, splits):
        if s == "train" and not has_val:
            v = hash_split(q, seed, val_frac, 0.0) == "val"
            train.append(not v)
            val.append(v)
        else:
            train.append(s == "train")
            val.append(s == "val")
    return np.array(train), np.array(val)


def _params_of(p: dict, tc) -> TrainParams:
    return TrainParams(lr=p["lr"], weight_decay=p["weight_decay"], batch_size=tc.batch_size,
                       max_epochs=tc.max_epochs, patience=tc.patience,
                       widths=(p["width1"], p["width2"]), dropouts=(p["dropout"], p["dropout"] * 2 / 3),
                       pairwise=tc.pairwise)


def common_space(trial, pca: bool = True) -> dict:
    s = SEARCH_SPACE
    p = {"lr": trial.suggest_float("lr", *s["lr"], log=True),
         "weight_decay": trial.suggest_float("weight_decay", *s["weight_decay"], log=True),
         "width1": trial.suggest_categorical("width1", s["width1"]),
         "width2": trial.suggest_categorical("width2", s["width2"]),
         "dropout": trial.suggest_float("dropout", *s["dropout"])}
    if pca:
        p["pca_dim"] = trial.suggest_categorical("pca_dim", s["pca_dim"])
    return p


@dataclass
class Tuned:
    router: TrunkRouter
    best_params: dict
    trials: list[dict]
    ensemble: dict


def tune_trunk(cfg: AppConfig, fit: Fit, name: str, space, design, reference: dict, n_trials: int,
               tr: np.ndarray, va: np.ndarray, scores: np.ndarray, n_targets: int, fixed: dict | None = None) -> Tuned:
    """Optuna over ``space(trial)``; the best setting refitted as the seed ensemble; temperature on val.

    ``design(p)`` -> (columns, x): the (n, d) inputs of a setting; a Preprocessor is fitted on train.
    ``fixed``: settings every trial shares, not searched (a fixed recipe's columns and PCA)."""
    fixed = fixed or {}
    import optuna

    tc = cfg.train

    def run(trial, p: dict) -> float:
        return fit(arrays(design, p, tr, va, scores)[2], _params_of(p, tc), [tc.seed], f"{name}-trial{trial.number}")[0]["val_loss"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=tc.seed))
    study.enqueue_trial({k: v for k, v in reference.items() if k not in fixed})  # first: the search can only improve on it
    # Trials in rounds of train.max_concurrent: asked together, fitted at once (each fit is its own
    # Ray Train run, so they spread over the cluster), told in trial order. The result depends on the
    # seed and the concurrency only, never on which fit finishes first; concurrency 1 is plain TPE.
    k, done = tc.max_concurrent, 0
    with ThreadPoolExecutor(max_workers=k) as pool:
        while done < n_trials:
            trials = [study.ask() for _ in range(min(k, n_trials - done))]
            settings = [dict(space(t), **fixed) for t in trials]
            futures = [pool.submit(run, t, p) for t, p in zip(trials, settings)]
            for t, p, f in zip(trials, settings, futures):
                loss = f.result()
                study.tell(t, loss)
                done += 1
                log.info("train %s: trial %d/%d val_loss %.4f %s", name, t.number + 1, n_trials, loss, p)
    best = dict(study.best_params, **fixed)
    router, ensemble = fit_ensemble(cfg, fit, name, best, *arrays(design, best, tr, va, scores), n_targets)
    trials = [{"number": t.number, "params": t.params, "val_loss": t.value} for t in study.trials]
    return Tuned(router, best, trials, ensemble)


def arrays(design, p: dict, tr: np.ndarray, va: np.ndarray, scores: np.ndarray):
    """(columns, fitted Preprocessor, (x_train, s_train, x_val, s_val) preprocessed) of setting ``p``."""
    cols, x = design(p)
    pre = Preprocessor(pca_dim=p["pca_dim"] or None).fit(x[tr])
    return cols, pre, (pre.transform(x[tr]), scores[tr], pre.transform(x[va]), scores[va])


def fit_ensemble(cfg: AppConfig, fit: Fit, name: str, p: dict, cols: list[str], pre: Preprocessor, data: tuple,
                 n_targets: int, offset: TaskPrior | None = None, offsets: tuple | None = None) -> tuple[TrunkRouter, dict]:
    """Setting ``p`` fitted with ``train.seeds`` seeds, the best ``train.keep`` by validation loss kept,
    the temperature fitted on val. A residual trunk passes its prior ``offset`` and that prior's
    (train, val) logits ``offsets``, added to the nets' logits in training."""
    tc = cfg.train
    params = _params_of(p, tc)
    seeds = [tc.seed + 1000 + i for i in range(tc.seeds)]
    metrics, states = fit(data + tuple(offsets or ()), params, seeds, f"{name}-ensemble")
    log.info("train %s: ensemble of %d seeds fitted", name, len(seeds))
    losses = json.loads(metrics["val_losses"])
    kept = [seeds[i] for i in np.argsort(losses, kind="stable")[: tc.keep]]
    nets = []
    for s in kept:
        net = SharedTrunkNet(pre.out_dim, n_targets, params.widths, params.dropouts)
        net.load_state_dict(member_state(states, f"seed{s}."))
        nets.append(net.eval())
    router = TrunkRouter(name, cols, temperature=tc.temperature, offset=offset).fit(
        pre, nets, data[2], data[3], offsets[1] if offsets else None)
    return router, {"seeds": seeds, "val_losses": losses, "kept": kept}


def cross_fit(cfg: AppConfig, fit: Fit, design, params: dict, logreg: PrefillLogReg, prefill: dict[str, np.ndarray],
              sem: np.ndarray | None, tasks: list | None, tr: np.ndarray, va: np.ndarray, scores: np.ndarray,
              costs: np.ndarray, residual: bool, semantic: tuple[Fit, dict, tuple] | None = None) -> OutOfFold:
    """Out-of-fold probabilities on the training rows measured on every target, for the choice of the
    served router (router_core.selection): the train rows cut in ``train.cross_fit`` seeded parts;
    for each part the prior, each target's mean (best_single: the singles' front as a router), the
    per-target logistic regression (``logreg``'s columns and Cs), the trunk's best setting ``params``
    (one seed, early-stopped and calibrated on the validation split as train does) and, with
    ``residual``, the residual trunk are refitted on the other parts and predict that part. With
    ``semantic`` = (the semantic MLP's fit, its best setting, the kNN's ks) the semantic baselines
    are refitted too (one seed), so that they are scored on the same rows, for the record."""
    tc = cfg.train
    one = cfg.model_copy(update={"train": tc.model_copy(update={"seeds": 1, "keep": 1})})
    rows = tr & ~np.isnan(scores).any(axis=1)
    names = (["prior", "best_single", "prefill_logreg", "prefill_trunk"] + (["prefill_trunk_residual"] if residual else [])
             + (["semantic_mlp", "semantic_knn"] if semantic is not None and sem is not None else []))
    out = {k: np.full(scores.shape, np.nan) for k in names}
    part_of = np.full(len(scores), -1)
    cols = sorted(set(logreg.columns_))
    train_rows = np.flatnonzero(tr)
    for j, part in enumerate(train_rows[p] for p in parts_of(len(train_rows), tc.cross_fit, 1, tc.seed)):
        fold = tr.copy()
        fold[part] = False
        part_of[part] = j
        prior = TaskPrior().fit([tasks[i] for i in np.flatnonzero(fold)] if tasks else [None] * int(fold.sum()), scores[fold])
        x = RouterInputs(n=len(part), prefill={c: v[part] for c, v in prefill.items()},
                         semantic=sem[part] if sem is not None else None,
                         tasks=[tasks[i] for i in part] if tasks else None)
        out["prior"][part] = predict_any(prior, x)
        out["best_single"][part] = ConstantRouter("best_single").fit(scores[fold]).predict_proba(x)
        out["prefill_logreg"][part] = PrefillLogReg(logreg.cs).fit(
            logreg.columns_, {c: prefill[c][fold] for c in cols}, scores[fold], {c: prefill[c][va] for c in cols},
            scores[va], c_fixed=logreg.fit_info_["C"]).predict_proba(x)
        c, pre, data = arrays(design, params, fold, va, scores)
        out["prefill_trunk"][part] = fit_ensemble(one, fit, f"prefill_trunk-fold{j}", params, c, pre, data,
                                                  scores.shape[1])[0].predict_proba(x)
        if residual:
            off = logit(prior.prior(tasks, len(scores))).astype(np.float32)
            out["prefill_trunk_residual"][part] = fit_ensemble(
                one, fit, f"prefill_trunk_residual-fold{j}", params, c, pre, data, scores.shape[1], offset=prior,
                offsets=(off[fold], off[va]))[0].predict_proba(x)
        if "semantic_mlp" in out:
            sem_fit, sem_params, ks = semantic
            c, pre, data = arrays(lambda p: (["semantic"], sem), sem_params, fold, va, scores)
            out["semantic_mlp"][part] = fit_ensemble(one, sem_fit, f"semantic_mlp-fold{j}", sem_params, c, pre, data,
                                                     scores.shape[1])[0].predict_proba(x)
            out["semantic_knn"][part] = SemanticKNN(ks).fit(sem[fold], scores[fold], sem[va], scores[va]).predict_proba(x)
        log.info("train: cross-fit part %d/%d (%d rows) predicted", j + 1, tc.cross_fit, len(part))
    return OutOfFold({k: v[rows] for k, v in out.items()}, scores[rows], costs[rows], part_of[rows], np.flatnonzero(rows))


def fit_bundle(cfg: AppConfig, fit: Fit, ds: Dataset, prefill: dict[str, np.ndarray], sem: np.ndarray,
               present: np.ndarray, fman: dict, sem_manifest: dict, code_version: str,
               sem_fit: Fit | None = None) -> Bundle:
    """Every router on dataset ``ds``: ``prefill`` (column -> (n, d)) and ``sem`` (n, d) aligned to its
    queries, ``present`` where both exist; ``fman``/``sem_manifest`` their feature caches' manifests.
    ``sem_fit``: the semantic MLP's fit where it differs from the trunks' (None = ``fit``)."""
    tc, bc = cfg.train, cfg.baselines
    seconds: dict[str, float] = {}
    q = ds.queries
    qids, targets = q.column("query_id").to_pylist(), ds.pool.names
    scores = outcome_matrix(ds.outcomes, qids, targets)
    tr, va = split_masks(q.column("split").to_pylist(), qids, tc.seed, tc.val_frac)
    tr, va = tr & present, va & present
    if tr.sum() < 10 or va.sum() < 5:
        raise DataError(f"too few training ({tr.sum()}) or validation ({va.sum()}) queries with features")

    t = time.perf_counter()
    profile = layer_profile({c: prefill[c][tr] for c in fman["columns"]}, scores[tr], targets,
                            cfg.select.pca_dim, cfg.select.eps)
    seconds["layer_profile"] = time.perf_counter() - t
    poolings = sorted({r["pooling"] for r in profile})
    pooling_choices = poolings + (["all"] if len(poolings) > 1 else [])

    fixed = None
    if tc.design == "all_mean_pca200":  # every mean-pooled layer, scaler + PCA-200 on train; the net is tuned
        n_mean = sum(r["pooling"] == "mean" for r in profile)
        if not n_mean:
            raise DataError(f"train.design all_mean_pca200 needs mean-pooled features; these have {', '.join(poolings)}")
        fixed = {"pooling": "mean", "selection": "all", "n_layers": n_mean, "pca_dim": 200}

    def prefill_space(trial) -> dict:
        p = common_space(trial, pca=fixed is None)
        if fixed:
            return p
        p["pooling"] = trial.suggest_categorical("pooling", pooling_choices)
        p["selection"] = trial.suggest_categorical("selection", SEARCH_SPACE["selection"])
        p["n_layers"] = trial.suggest_int("n_layers", 1, tc.max_layers)
        return p

    tasks = q.column("task").to_pylist()
    has_tasks = any(x is not None for x in tasks)
    # The prior every residual and blend starts from: per task where tasks are known, else the global mean.
    prior_any = TaskPrior().fit([tasks[i] for i in np.flatnonzero(tr)], scores[tr])
    prior = prior_any if has_tasks else None
    extra = {"semantic": sem}
    if "task_prior" in tc.extra_inputs:
        if prior is None:
            raise DataError("train.extra_inputs has task_prior but the queries have no task")
        extra["task_prior"] = prior.predict_proba(RouterInputs(n=len(qids), tasks=tasks))

    def prefill_design(p: dict) -> tuple[list[str], np.ndarray]:
        rows = [r for r in profile if p["pooling"] == "all" or r["pooling"] == p["pooling"]]
        cols = select_columns(rows, p["selection"], p["n_layers"]) + list(tc.extra_inputs)
        return cols, np.concatenate([prefill[c] if c in prefill else extra[c] for c in cols], axis=1)

    reference = dict(REFERENCE, pooling=poolings[0], selection="top_k_mean", n_layers=1)
    t = time.perf_counter()
    trunk = tune_trunk(cfg, fit, "prefill_trunk", prefill_space, prefill_design, reference, tc.n_trials,
                       tr, va, scores, len(targets), fixed)
    seconds["prefill_trunk"] = time.perf_counter() - t
    trunk_fields = dict(encoder=fman["encoder"], features_settings_key=fman["settings_key"],
                        extra_inputs=list(tc.extra_inputs))
    routers: dict[str, tuple[Router, dict]] = {"prefill_trunk": (trunk.router, dict(
        trunk_fields, layers=[{"column": r["column"], "fisher_mean": r["fisher_mean"], "d_eff": r["d_eff"]}
                              for r in profile if r["column"] in trunk.router.columns],
        preprocess={"standardise": True, "pca_dim": trunk.best_params["pca_dim"] or None},
        best_params=trunk.best_params, trials=trunk.trials, ensemble=trunk.ensemble,
        calibration=trunk.router.fit_info_))}
    if tc.residual:
        t = time.perf_counter()
        off = logit(prior_any.prior(tasks if has_tasks else None, len(qids))).astype(np.float32)
        cols, pre, data = arrays(prefill_design, trunk.best_params, tr, va, scores)
        residual, ens = fit_ensemble(cfg, fit, "prefill_trunk_residual", trunk.best_params, cols, pre, data,
                                     len(targets), offset=prior_any, offsets=(off[tr], off[va]))
        routers["prefill_trunk_residual"] = (residual, dict(
            trunk_fields, preprocess={"standardise": True, "pca_dim": trunk.best_params["pca_dim"] or None},
            best_params=trunk.best_params, ensemble=ens, calibration=residual.fit_info_))
        seconds["prefill_trunk_residual"] = time.perf_counter() - t
    if tc.distil_width:
        t = time.perf_counter()
        _, x = prefill_design(trunk.best_params)
        student = trunk.router.distil(x[tr], x[va], tc.distil_width, tc.seed, tc.distil_mix, tc.max_epochs,
                                      tc.patience)
        inputs_va = RouterInputs(n=int(va.sum()), prefill={c: v[va] for c, v in prefill.items()},
                                 prior=extra["task_prior"][va] if "task_prior" in extra else None, semantic=sem[va])
        info = dict(student.fit_info_, val_bce_labels=bce(student.predict_proba(inputs_va), scores[va]),
                    val_bce_labels_teacher=bce(trunk.router.predict_proba(inputs_va), scores[va]))
        routers["prefill_trunk_distilled"] = (student, dict(trunk_fields, distillation=info))
        seconds["prefill_trunk_distilled"] = time.perf_counter() - t
        log.info("train: prefill_trunk_distilled %s", info)
    t = time.perf_counter()
    sem_mlp = tune_trunk(cfg, sem_fit or fit, "semantic_mlp", common_space, lambda p: (["semantic"], sem), REFERENCE,
                         bc.semantic_trials or tc.n_trials, tr, va, scores, len(targets))
    sem_fields = dict(encoder=sem_manifest["encoder"], features_settings_key=sem_manifest["settings_key"])
    routers["semantic_mlp"] = (sem_mlp.router, dict(sem_fields, best_params=sem_mlp.best_params, trials=sem_mlp.trials,
                                                     ensemble=sem_mlp.ensemble, calibration=sem_mlp.router.fit_info_))
    seconds["semantic_mlp"] = time.perf_counter() - t

    t = time.perf_counter()
    knn = SemanticKNN(bc.knn_k).fit(sem[tr], scores[tr], sem[va], scores[va])
    per_target = [max(profile, key=lambda r: r["fisher"][tg])["column"] for tg in targets]
    cols = set(per_target)
    logreg = PrefillLogReg(bc.logreg_c).fit(per_target, {c: prefill[c][tr] for c in cols}, scores[tr],
                                            {c: prefill[c][va] for c in cols}, scores[va])
    # Each call's output length (observed, else derived from its cost): where a cost is unknown, the
    # estimate prices it (router_core.lengths); route's tally and evaluate use the same model.
    tokens_tr, tok_source = dataset_output_tokens(ds, qids, targets, tr)
    lengths = fit_output_lengths(tokens_tr, [tasks[i] for i in np.flatnonzero(tr)] if has_tasks else None, targets,
                                 tok_source)
    costs = all_costs(ds, qids, targets, lengths.expected(tasks if has_tasks else None, len(qids)))
    mean_cost = np.nanmean(costs[tr], axis=0)
    routers["prefill_logreg"] = (logreg, dict(logreg.fit_info_, **trunk_fields))
    routers["semantic_knn"] = (knn, dict(knn.fit_info_, **sem_fields))
    for router in (ConstantRouter("best_single"), ConstantRouter("cheapest", int(np.argmin(mean_cost))),
                   ConstantRouter("most_expensive", int(np.argmax(mean_cost))), RandomRouter(len(targets), bc.random_seed),
                   OracleRouter(), prior):
        if router is not None:
            routers[router.kind] = (router.fit(scores[tr]) if isinstance(router, ConstantRouter) else router, {})
    seconds["other_baselines"] = time.perf_counter() - t

    best_single = int(np.nanmean(scores[tr], axis=0).argmax())
    t = time.perf_counter()
    oof = None
    measured_tr = int((tr & ~np.isnan(scores).any(axis=1)).sum())  # rows the out-of-fold choice would score
    # A task prior as a trunk input would carry each row's own label into its out-of-fold prediction.
    if (tc.cross_fit and tc.serve == "auto" and "task_prior" not in tc.extra_inputs
            and measured_tr >= max(tc.cross_fit, 2 * tc.cv_folds)):
        oof = cross_fit(cfg, fit, prefill_design, trunk.best_params, logreg, prefill, sem, tasks if has_tasks else None,
                        tr, va, scores, costs, tc.residual,
                        semantic=(sem_fit or fit, sem_mlp.best_params, bc.knn_k) if bc.cross_fit else None)
        seconds["cross_fit"] = time.perf_counter() - t
    elif tc.cross_fit:
        log.info("train: the served router chosen on validation rows, not out of fold (train.serve %s, extra_inputs "
                 "%s, %d training rows measured on every target)", tc.serve, tc.extra_inputs, measured_tr)
    serving = serve_on_validation(cfg, routers, prior_any, prefill, sem, tasks if has_tasks else None, va, scores,
                                  costs, best_single, oof)
    seconds["selection"] = time.perf_counter() - t
    t = time.perf_counter()
    # Output lengths from the served router's own prefill columns (route reads them anyway), where they
    # beat the means on validation (router_core.lengths).
    tokens, _ = dataset_output_tokens(ds, qids, targets)
    lengths, linear = with_linear(lengths, prefill, prefill_columns(routers[serving.winner][0]), tokens,
                                  tasks if has_tasks else None, tr, va, LENGTHS_FOLDER)
    seconds["output_lengths"] = time.perf_counter() - t

    fingerprint = data_fingerprint(ds)
    common = {"targets": targets, "pool": ds.pool.model_dump(exclude_none=True), "data_fingerprint": fingerprint,
              "n_train": int(tr.sum()), "n_val": int(va.sum()), "code_version": code_version}
    held = None
    if serving.held_out is not None:
        h = serving.held_out
        held = to_table(h, [qids[i] for i in h.index], targets)
    return Bundle(routers, common, profile, serving.winner, targets[best_single],
                  {t: float(m) for t, m in zip(targets, lengths.median)}, seconds, serving.selection,
                  serving.operating_point, held, lengths.to_dict(), linear)


def serve_on_validation(cfg: AppConfig, routers: dict, prior_any: TaskPrior, prefill: dict, sem: np.ndarray,
                        tasks: list | None, va: np.ndarray, scores: np.ndarray, costs: np.ndarray,
                        best_single: int, oof: OutOfFold | None = None) -> Serving:
    """The blends, the served router and its operating point, chosen on the validation rows measured
    on every target (router_core.selection); the blends join ``routers``. ``train.serve`` other than
    auto forces the served router (the operating point is still measured for it)."""
    tc = cfg.train
    rows = va & ~np.isnan(scores).any(axis=1)
    if rows.sum() < 2 * tc.cv_folds:  # nothing to choose with: the trunk serves at tau 0, and train says why
        name = tc.serve if tc.serve != "auto" else (
            "prefill_trunk_distilled" if "prefill_trunk_distilled" in routers else "prefill_trunk")
        why = f"{int(rows.sum())} validation queries measured on every target: too few to choose a router"
        log.warning("train: %s; serving %s at tau 0", why, name)
        return Serving(name, {}, {"best": name, "winner": name, "candidates": {}, "skipped": why}, {})
    x_va = RouterInputs(n=int(rows.sum()), prefill={c: v[rows] for c, v in prefill.items()}, semantic=sem[rows],
                        tasks=[tasks[i] for i in np.flatnonzero(rows)] if tasks is not None else None)
    fitted = {k: r for k, (r, _) in routers.items()}
    serving = choose_serving(fitted, prior_any, x_va, scores[rows], costs[rows], best_single, tc.cv_folds,
                             tc.cv_repeats, tc.seed, OperatingRule.of(tc), oof=oof)
    if serving.held_out is not None and serving.held_out.index is None:  # validation rows
        serving.held_out.index = np.flatnonzero(rows)
    for name, b in serving.blends.items():
        routers[name] = (b, {"blend": b.fit_info_, "features_settings_key": routers["prefill_trunk"][1]["features_settings_key"],
                             "encoder": routers["prefill_trunk"][1]["encoder"]})
    if tc.serve != "auto":
        if tc.serve not in routers:
            raise DataError(f"train.serve: no router {tc.serve!r} (routers: {', '.join(routers)})")
        from .routers import predict_any
        from .selection import point_for

        serving.winner = tc.serve
        serving.selection["forced"] = tc.serve
        serving.operating_point = point_for(tc.serve, serving.held_out, predict_any(routers[tc.serve][0], x_va),
                                            scores[rows], costs[rows], best_single, OperatingRule.of(tc))
    log.info("train: serving %s (P-AUCCC %.4f on %s rows, best %s); operating point tau %.4f, saving %.1f%% on "
             "%s held-out rows",
             serving.winner, serving.selection["candidates"].get(serving.winner, {}).get("val_p_auccc", float("nan")),
             serving.selection.get("rows", {}).get("kind", "validation"),
             serving.selection["best"], serving.operating_point["tau"], serving.operating_point["saving_pct"],
             sum(serving.operating_point["rows"].values()))
    return serving


def data_fingerprint(ds: Dataset) -> str:
    """A model's dataset, identified: its queries with their splits, and how many outcomes."""
    q = ds.queries
    return hashlib.sha256(json.dumps({
        "queries": sorted(zip(q.column("query_id").to_pylist(), q.column("split").to_pylist()), key=lambda t: t[0]),
        "n_outcomes": ds.outcomes.num_rows}, default=str).encode()).hexdigest()


def all_costs(ds: Dataset, qids: list[str], targets: list[str], output_tokens: np.ndarray) -> np.ndarray:
    """(n, K) dollars per call of every query: observed, else estimated from prices and the
    ``output_tokens`` (K,) or (n, K) expected of each call."""
    observed = outcome_matrix(ds.outcomes, qids, targets, "cost_usd")
    return call_costs(observed, ds.queries.column("text").to_pylist(), ds.pool, targets, output_tokens)[0]


def save_bundle(storage, out: str, bundle: Bundle, features: dict[str, FeatureRef], meta: dict) -> ModelIndex:
    """Every router under ``out/<name>/`` (safetensors + manifest), the layer profile, and last the
    index (``out/manifest.json``) naming them. ``meta``: dataset, features, configs used."""
    folders = {}
    for name, (router, fields) in bundle.routers.items():
        save_router(storage, join(out, name), router, dict(bundle.common, kind="prefill-router-model", **fields))
        folders[name] = name
    storage.write_text(join(out, "layer_profile.json"), json.dumps(
        {"dataset": meta["dataset"], "features": meta["features"], "n_train": bundle.common["n_train"],
         "targets": bundle.common["targets"], "pca_dim": meta["config"]["select"]["pca_dim"],
         "profile": bundle.profile}, indent=2))
    # `default` is what evaluate and retrain compare; `serve` is what route uses unless told.
    index = ModelIndex(**bundle.common, default=bundle.serve, serve=bundle.serve, routers=folders,
                       selection=bundle.selection, operating_point=bundle.operating_point,
                       best_single=bundle.best_single, output_tokens_median=bundle.output_tokens_median,
                       output_lengths=bundle.output_lengths,
                       features=features, layer_profile="layer_profile.json", seconds=bundle.seconds,
                       config=meta["config"], held_out=HELD_OUT if bundle.held_out is not None else None)
    if bundle.held_out is not None:
        storage.write_table(bundle.held_out, join(out, HELD_OUT))
    if bundle.length_map is not None:
        bundle.length_map.save(storage, join(out, LENGTHS_FOLDER), dict(bundle.common, **bundle.output_lengths["prefill"]))
    index.save(storage, out)
    return index
