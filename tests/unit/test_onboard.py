"""A new target's column from few labels (router_core.onboard, routers.Onboarded), on synthetic pools."""

import numpy as np

from router_core.onboard import choose_head, fit_prior, log_loss, pool_gain
from router_core.routers import (ConstantRouter, Head, Onboarded, RouterInputs, TaskPrior, load_router,
                                 save_router, uses_tasks)
from router_core.storage import Storage


def _pool(n=400, seed=0):
    """K=3 targets whose correctness follows one difficulty d per query; the base router knows d."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=n)
    tasks = [["a", "b", "c"][i % 3] for i in range(n)]
    base = 1 / (1 + np.exp(-(d[:, None] * [1.0, 1.5, 2.0] + [-0.5, 0.0, 0.8] + rng.normal(0, 0.3, (n, 3)))))
    return rng, d, tasks, base


def test_a_target_right_where_the_others_are_gets_the_similar_head():
    rng, d, tasks, base = _pool()
    y = (rng.random(len(d)) < 1 / (1 + np.exp(-(1.8 * d + 0.2)))).astype(float)
    ch = choose_head(base, tasks, y, folds=5, seed=0)
    assert ch.kind == "similar" and ch.table["similar"]["oof_auc"] > ch.table["prior"]["oof_auc"] + 0.15
    assert ch.table["similar"]["oof_auc"] > 0.75 and len(ch.oof) == len(y)
    # Calibrated: its mean probability is the labels' rate, and it beats the constant on log loss.
    p = ch.head.predict(base, tasks)
    assert abs(p.mean() - y.mean()) < 0.03 and log_loss(p, y) < log_loss(np.full(len(y), y.mean()), y) - 0.05


def test_a_target_that_follows_the_task_gets_the_prior_head_shrunk_toward_the_overall_mean():
    rng, d, tasks, base = _pool(seed=1)
    rate = {"a": 0.9, "b": 0.2, "c": 0.5}
    y = np.array([rng.random() < rate[t] for t in tasks], float)
    ch = choose_head(base, tasks, y, folds=5, seed=0)
    assert ch.kind == "prior"
    h = fit_prior(tasks[:4], np.array([1.0, 0.0, 0.0, 1.0]), weight=2.0)  # a: 1, 1; b: 0; c: 0; overall 0.5
    assert h.tasks == ["a", "b", "c"] and np.allclose(h.table, [(2 + 1) / 4, (0 + 1) / 3, (0 + 1) / 3])
    assert np.allclose(h.predict(np.zeros((2, 3)), ["a", "unseen"]), [0.75, 0.5])
    assert np.allclose(h.predict(np.zeros((2, 3)), None), 0.5)  # no task column: the overall mean


def test_the_pool_gain_is_negative_for_a_cheap_target_whose_column_lies():
    """A new target that is cheap and often wrong, with a column that says it is always right: the
    policy sends it queries it fails, and the pool routes worse with it than without it."""
    rng, d, tasks, base = _pool(seed=2)
    n = len(d)
    scores = (rng.random((n, 3)) < base).astype(float)
    new_scores = (rng.random(n) < 0.2).astype(float)
    s = np.column_stack([scores, new_scores])
    c = np.tile([2.0, 4.0, 9.0, 0.5], (n, 1))
    lying = pool_gain(base, np.full(n, 0.99), s, c)
    assert lying["gain"] < -0.01 and lying["rows"] == n
    honest = pool_gain(base, np.clip(new_scores * 0.9 + 0.05, 0, 1), s, c)  # a column that knows: a gain
    assert honest["gain"] > 0.01 and honest["p_auccc_without"] == lying["p_auccc_without"]


def test_an_onboarded_router_keeps_the_old_columns_to_the_bit_and_round_trips(tmp_path):
    rng, d, tasks, base = _pool(seed=3)
    prior = TaskPrior().fit(tasks, (rng.random(base.shape) < base).astype(float))
    x = RouterInputs(n=len(tasks), tasks=tasks, prior=np.zeros((len(tasks), 4)))  # a whole-pool prior input: cut
    similar = Head("similar", mean=np.zeros(3), scale=np.ones(3), w=np.array([0.5, -0.2, 1.0]), b=0.1)
    r = Onboarded(prior, ["t0", "t1", "t2"], [similar, fit_prior(tasks, rng.random(len(tasks)), 5.0)])
    p = r.predict_proba(x)
    assert p.shape == (len(tasks), 5) and np.array_equal(p[:, :3], prior.predict_proba(x))
    assert uses_tasks(r) and "tasks" in r.needs
    st = Storage()
    save_router(st, str(tmp_path / "r"), r, {"targets": ["t0", "t1", "t2", "n0", "n1"]})
    back, manifest = load_router(st, str(tmp_path / "r"))
    assert manifest["router"] == "onboarded" and np.array_equal(back.predict_proba(x), p)
    again = Onboarded(back, ["t0", "t1", "t2", "n0", "n1"], [Head("prior", fallback=0.3)])  # a second onboarding
    assert np.array_equal(again.predict_proba(x)[:, :5], p) and np.allclose(again.predict_proba(x)[:, 5], 0.3)
    const = ConstantRouter("best_single").fit(np.array([[1.0, 0.0, 1.0]]))
    assert np.array_equal(Onboarded(const, ["t0", "t1", "t2"], [similar]).predict_proba(x)[:, :3],
                          const.predict_proba(x))


def test_without_clear_evidence_for_the_prior_the_similar_head_serves():
    """Labels that follow neither the tasks nor the pool: the two heads' out-of-fold log losses are
    within noise of each other, and the similar head (the first) is kept; with the margin at 0 the
    lower mean wins, whichever it is."""
    rng, d, tasks, base = _pool(n=300, seed=4)
    y = (rng.random(300) < 0.6).astype(float)
    ch = choose_head(base, tasks, y, folds=5, seed=0)
    p = ch.table["prior"]
    assert ch.kind == "similar" and abs(p["vs_first"]) < 2 * p["se"]
    loose = choose_head(base, tasks, y, folds=5, seed=0, margin_se=0.0)
    assert loose.kind == min(loose.table, key=lambda k: loose.table[k]["oof_log_loss"])
