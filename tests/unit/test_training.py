"""The whole router bundle fitted in this process (no Ray) on a synthetic pool: the residual trunk,
the blends, the choice of the served router and its operating point, saved and loaded back."""

import numpy as np
import pyarrow as pa
import pytest

from router_core.config import load_config
from router_core.dataset import Dataset
from router_core.model_index import FeatureRef, read_index
from router_core.routers import load_router, predict_any, RouterInputs
from router_core.schemas import OUTCOMES, QUERIES, Pool
from router_core.selection import SERVABLE
from router_core.storage import Storage
from router_core.training import fit_bundle, fit_in_process, save_bundle

SETS = ["train.n_trials=2", "train.seeds=2", "train.keep=2", "train.max_epochs=30", "train.patience=5",
        "train.batch_size=64", "train.max_layers=1", "train.distil_width=16", "baselines.semantic_trials=1",
        "baselines.knn_k=[5]", "train.cv_repeats=3"]


def _pool_data(n=1200, seed=0):
    """3 targets (cheap, mid, dear) and 4 tasks; whether a target is right depends on the task and on a
    per-query difficulty that the prefill features carry (the sentence embeddings do not)."""
    rng = np.random.default_rng(seed)
    tasks = rng.choice(["a", "b", "c", "d"], n)
    difficulty = rng.normal(size=n)
    skill = {"a": [1.0, 1.5, 2.0], "b": [-1.0, 0.5, 1.0], "c": [0.0, 0.0, 1.5], "d": [-0.5, 1.0, 0.5]}
    logit = np.array([skill[t] for t in tasks]) - 1.5 * difficulty[:, None] * np.array([1.0, 0.7, 0.4])
    scores = (rng.random((n, 3)) < 1 / (1 + np.exp(-logit))).astype(float)
    x = np.concatenate([difficulty[:, None], rng.normal(size=(n, 7))], axis=1).astype(np.float32)
    split = np.where(rng.random(n) < 0.25, "test", "train")
    qids = [f"q{i}" for i in range(n)]
    queries = pa.table({"query_id": qids, "text": ["question " * (5 + i % 7) for i in range(n)],
                        "split": split.tolist(), "task": tasks.tolist()}, schema=QUERIES)
    names = ["cheap", "mid", "dear"]
    outcomes = pa.table({"query_id": [q for q in qids for _ in names], "model": names * n,
                         "score": scores.ravel().tolist(), "cost_usd": [None] * (3 * n),
                         "output_tokens": [100] * (3 * n)}, schema=OUTCOMES)
    pool = Pool.model_validate({"models": [{"name": m, "price_in_per_mtok": p, "price_out_per_mtok": 2 * p}
                                           for m, p in zip(names, [0.1, 1.0, 10.0])]})
    prefill = {"mean_04": x, "last_04": x[:, ::-1] + 0.1 * rng.normal(size=x.shape).astype(np.float32)}
    return Dataset(queries, outcomes, pool), prefill, rng.normal(size=(n, 6)).astype(np.float32)


@pytest.mark.parametrize("cross_fit", [0, 3])
def test_bundle_serves_the_router_validation_chooses_and_it_round_trips(tmp_path, cross_fit):
    ds, prefill, sem = _pool_data()
    # The router that wins serves and round-trips; on these 1,200 rows its tau 0 cannot promise half a
    # point on a batch of 1000, so by default the best single would serve (tests/unit/test_selection.py).
    cfg = load_config(None, [*SETS, f"train.cross_fit={cross_fit}", "train.fallback_best_single=false"])
    fman = {"columns": list(prefill), "encoder": {"identity": "synthetic"}, "settings_key": "k1"}
    sman = {"columns": ["mean_06"], "encoder": {"identity": "synthetic-sem"}, "settings_key": "k2"}
    bundle = fit_bundle(cfg, fit_in_process, ds, prefill, sem, np.ones(ds.queries.num_rows, bool), fman, sman, "test")
    assert {"prefill_trunk_residual", "prefill_trunk_shrunk", "prefill_stack"} <= set(bundle.routers)
    sel = bundle.selection
    # The winner serves, even where its tau 0 may break the promise (train.fallback_best_single off).
    assert bundle.serve == sel["winner"] in SERVABLE and sel["candidates"][sel["winner"]]["within_noise"]
    assert "fallback" not in sel
    # The features carry each query's difficulty but not its task: the plain trunk cannot know which
    # target a task favours, the residual trunk starts from the task prior and routes far better.
    c = sel["candidates"]
    assert c["prefill_trunk_residual"]["val_p_auccc"] > c["prefill_trunk"]["val_p_auccc"] + 0.01
    n_train, n_val = bundle.common["n_train"], bundle.common["n_val"]
    if cross_fit:  # chosen on every training row, out of fold; the distilled trunk has no refits: not a candidate
        assert sel["rows"] == {"kind": "out-of-fold training", "n": n_train} and n_train > 4 * n_val
        assert "prefill_trunk_distilled" not in c and bundle.seconds["cross_fit"] > 0
    else:
        assert sel["rows"] == {"kind": "validation", "n": n_val} and "prefill_trunk_distilled" in c
    op = bundle.operating_point
    # Chosen on measured outcomes of every held-out row: out of fold plus validation, or validation alone.
    assert op["operating_rule"] == "measured" and 0 <= op["tau"] <= 1 and op["tolerance"] == 0.005
    assert op["rows"] == ({"out_of_fold": n_train, "validation": n_val} if cross_fit else {"validation": n_val})
    widen = np.sqrt(1 + sum(op["rows"].values()) / 1000)  # a promise for a batch of 1000 (train.promise_batch)
    assert op["promise_batch"] == 1000
    assert op["tau"] == 0 or op["accuracy_change"] - 1.645 * widen * op["accuracy_change_se"] >= -0.005 - 1e-12
    assert op["accuracy"] == pytest.approx(op["best_single_accuracy"] + op["accuracy_change"])
    assert op["guard_z"] == 1.645
    assert op["unguarded"]["saving_pct"] >= op["saving_pct"]  # the guard only stops sooner
    assert (op["fallback"] is None) == (op["tau"] > 0) and op["promise_kept"] == (op["fallback"] != "best single")

    refs = {"prefill": FeatureRef(uri="f", settings_key="k1", encoder={}),
            "semantic": FeatureRef(uri="s", settings_key="k2", encoder={}, column="mean_06")}
    out = str(tmp_path / "model")
    save_bundle(Storage(), out, bundle, refs, {"dataset": "d", "features": "f", "config": {"select": {"pca_dim": 8}}})
    index = read_index(Storage(), out)
    assert index.serve == bundle.serve and index.operating_point == op
    x = RouterInputs(n=20, prefill={c: v[:20] for c, v in prefill.items()}, tasks=ds.queries.column("task").to_pylist()[:20])
    for name in SERVABLE & set(index.routers):
        loaded, _ = load_router(Storage(), index.folder(out, name))
        np.testing.assert_allclose(predict_any(loaded, x), predict_any(bundle.routers[name][0], x), atol=1e-6)


def _tune(max_concurrent: int, fit):
    from router_core.training import REFERENCE, common_space, tune_trunk

    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    scores = (rng.random((200, 2)) < 0.5).astype(float)
    tr = np.arange(200) < 150
    cfg = load_config(None, SETS + ["train.n_trials=5", f"train.max_concurrent={max_concurrent}", "train.seeds=1",
                                    "train.keep=1"])
    return tune_trunk(cfg, fit, "t", common_space, lambda p: (["c"], x), REFERENCE, 5, tr, ~tr, scores, 2)


def test_trials_run_concurrently_and_the_result_does_not_depend_on_which_finishes_first():
    import threading
    import time

    active, most = [0], [0]
    lock = threading.Lock()

    def fit(data, params, seeds, name):  # a fit that takes longer the lower its learning rate
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.2 * (1e-3 / params.lr) ** 0.5 if "trial" in name else 0)
        with lock:
            active[0] -= 1
        return {"val_loss": float(params.lr * 1e3 + params.weight_decay), "val_losses": "[1.0]"}, _states(data, params)

    def _states(data, params):
        from router_core.model import SharedTrunkNet

        net = SharedTrunkNet(data[0].shape[1], 2, params.widths, params.dropouts)
        return {f"seed1000.{k}": v.numpy() for k, v in net.state_dict().items()}

    serial = _tune(1, fit)
    assert most[0] == 1
    most[0] = 0
    parallel, again = _tune(3, fit), _tune(3, fit)
    assert most[0] == 3  # three trials fitted at once
    assert parallel.trials == again.trials  # told in trial order: same search whatever finishes first
    assert serial.trials[0]["params"] == parallel.trials[0]["params"]  # the reference setting first in both
    assert len(parallel.trials) == len(serial.trials) == 5
    # Concurrency 1 is the plain seeded TPE study it replaced (study.optimize over the same objective).
    import optuna

    from router_core.training import REFERENCE, common_space

    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(REFERENCE)
    study.optimize(lambda t: (lambda p: p["lr"] * 1e3 + p["weight_decay"])(common_space(t)), n_trials=5)
    assert [t["params"] for t in serial.trials] == [t.params for t in study.trials]


def test_cross_fit_predicts_each_training_row_by_refits_that_did_not_see_it():
    """Every task holds two rows and the scores are coin flips: a task prior fitted with a row knows
    its label (it ranks the training rows well in sample); fitted without it, it knows nothing of it."""
    from router_core import metrics as M
    from router_core.routers import PrefillLogReg, TaskPrior
    from router_core.training import REFERENCE, cross_fit

    rng = np.random.default_rng(0)
    n = 240
    tasks = [f"t{i // 2}" for i in range(n)]
    scores = (rng.random((n, 2)) < 0.5).astype(float)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    tr = np.arange(n) < 200
    cfg = load_config(None, [*SETS, "train.cross_fit=4"])
    logreg = PrefillLogReg().fit(["mean_04", "mean_04"], {"mean_04": x[tr]}, scores[tr], {"mean_04": x[~tr]}, scores[~tr])
    sem = rng.normal(size=(n, 3)).astype(np.float32)  # a trunk with train.extra_inputs=[semantic] reads it too
    oof = cross_fit(cfg, fit_in_process, lambda p: (["mean_04", "semantic"], np.concatenate([x, sem], axis=1)),
                    dict(REFERENCE), logreg, {"mean_04": x}, sem, tasks, tr, ~tr, scores, np.tile([1.0, 2.0], (n, 1)),
                    residual=True)
    assert set(oof.proba) == {"prior", "best_single", "prefill_logreg", "prefill_trunk", "prefill_trunk_residual"}
    assert all(p.shape == (200, 2) and not np.isnan(p).any() for p in oof.proba.values())
    np.testing.assert_array_equal(oof.scores, scores[tr])
    assert sorted(np.unique(oof.part)) == [0, 1, 2, 3] and np.bincount(oof.part).tolist() == [50] * 4
    for j in range(4):  # each target's mean over the other parts' rows
        np.testing.assert_allclose(oof.proba["best_single"][oof.part == j], np.tile(scores[tr][oof.part != j].mean(0),
                                                                                     (50, 1)))
    in_sample = TaskPrior().fit(tasks[:200], scores[tr]).prior(tasks[:200], 200)
    assert M.mean_auc(in_sample, scores[tr]) > 0.7
    assert abs(M.mean_auc(oof.proba["prior"], oof.scores) - 0.5) < 0.1


def test_the_fixed_recipe_reads_every_mean_pooled_layer_through_pca_200():
    from router_core.errors import DataError

    ds, prefill, sem = _pool_data(n=600)
    prefill["mean_08"] = prefill["mean_04"] + 0.1
    cfg = load_config(None, [*SETS, "train.cross_fit=0", "train.design=all_mean_pca200"])
    fman = {"columns": list(prefill), "encoder": {"identity": "synthetic"}, "settings_key": "k1"}
    sman = {"columns": ["mean_06"], "encoder": {"identity": "synthetic-sem"}, "settings_key": "k2"}
    present = np.ones(ds.queries.num_rows, bool)
    bundle = fit_bundle(cfg, fit_in_process, ds, prefill, sem, present, fman, sman, "test")
    trunk, fields = bundle.routers["prefill_trunk"]
    assert trunk.columns == ["mean_04", "mean_08"] and fields["best_params"]["pca_dim"] == 200
    assert all("pca_dim" not in t["params"] and "pooling" not in t["params"] for t in fields["trials"])  # not searched
    assert bundle.routers["prefill_trunk_residual"][0].columns == trunk.columns
    last_only = {"last_04": prefill["last_04"]}
    with pytest.raises(DataError, match="all_mean_pca200 needs mean-pooled features; these have last"):
        fit_bundle(cfg, fit_in_process, ds, last_only, sem, present, dict(fman, columns=["last_04"]), sman, "test")
