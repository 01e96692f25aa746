"""Each router on small hand-checked cases, and the save/load round trip of every kind."""

import numpy as np
import pytest

from router_core.errors import ArtifactError
from router_core.evaluation import build_report, call_costs, output_token_medians
from router_core.model import Preprocessor, SharedTrunkNet, fit_temperature
from router_core.reporting import curve_panels, plot_curves
from router_core.routers import (ConstantRouter, OracleRouter, PrefillLogReg, RandomRouter, RouterInputs,
                                 SemanticKNN, TaskPrior, TrunkRouter, load_router, save_router)
from router_core.schemas import Pool
from router_core.storage import Storage

NAN = np.nan


def test_task_prior_is_the_per_task_mean_ignoring_unmeasured():
    tasks = ["a", "a", "b", "b"]
    scores = np.array([[1, 0], [0, NAN], [1, 1], [1, 0]], dtype=float)
    r = TaskPrior().fit(tasks, scores)
    p = r.predict_proba(RouterInputs(n=3, tasks=["a", "b", "zzz"]))
    # a: (0.5, 0.0); b: (1.0, 0.5); unseen task: the global means (0.75, 1/3).
    assert np.allclose(p, [[0.5, 0.0], [1.0, 0.5], [0.75, 1 / 3]])
    with pytest.raises(ArtifactError, match="needs a task per query"):
        r.predict_proba(RouterInputs(n=1))


def test_knn_averages_its_neighbours_with_a_smoothing_prior():
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=float)
    scores = np.array([[1, 0], [1, 0], [0, 1], [0, NAN]], dtype=float)
    knn = SemanticKNN(ks=(2,), alpha=1.0).fit(emb, scores, emb, scores)
    p = knn.predict_proba(RouterInputs(n=1, semantic=np.array([[1.0, 0.05]])))
    # neighbours rows 0, 1: target 0 (1 + 1 + 0.5) / 3, target 1 (0 + 0 + 1/3) / 3.
    assert p[0].tolist() == pytest.approx([2.5 / 3, (1 / 3) / 3])
    p = knn.predict_proba(RouterInputs(n=1, semantic=np.array([[0.05, 1.0]])))
    # neighbours rows 2, 3: target 1 has one measured neighbour: (1 + 1/3) / 2.
    assert p[0].tolist() == pytest.approx([(0 + 0 + 0.5) / 3, (1 + 1 / 3) / 2])


def test_knn_chooses_k_on_validation():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(200, 4))
    y = (emb[:, :1] > 0).astype(float)  # the label is a direction: small k wins
    knn = SemanticKNN(ks=(3, 100)).fit(emb[:150], y[:150], emb[150:], y[150:])
    info = knn.fit_info_
    assert knn.k_ == 3 and info["val_bce_by_k"]["3"] < info["val_bce_by_k"]["100"]


def test_logreg_learns_a_separable_target_per_column():
    rng = np.random.default_rng(1)
    x = {"mean_01": rng.normal(size=(300, 5)), "last_02": rng.normal(size=(300, 5))}
    s = np.stack([(x["mean_01"][:, 0] > 0), (x["last_02"][:, 1] > 0)], axis=1).astype(float)
    s[::7, 1] = NAN  # unmeasured rows are left out, not read as 0
    tr, va = slice(0, 200), slice(200, 300)
    r = PrefillLogReg().fit(["mean_01", "last_02"], {c: v[tr] for c, v in x.items()}, s[tr],
                            {c: v[va] for c, v in x.items()}, s[va])
    info = r.fit_info_
    p = r.predict_proba(RouterInputs(n=100, prefill={c: v[va] for c, v in x.items()}))
    assert ((p > 0.5) == (np.nan_to_num(s[va]) > 0.5))[~np.isnan(s[va])].mean() > 0.9
    assert len(info["C"]) == 2
    # A refit at the Cs chosen (cross-fitting's shortcut) walks the same path only as far as each C:
    # on the same rows it is the same fit, with nothing left to choose on validation.
    again = PrefillLogReg().fit(["mean_01", "last_02"], {c: v[tr] for c, v in x.items()}, s[tr],
                                {c: v[:0] for c, v in x.items()}, s[:0], c_fixed=info["C"])
    assert again.fit_info_["C"] == info["C"]
    np.testing.assert_allclose(again.coef_, r.coef_)
    np.testing.assert_allclose(again.intercept_, r.intercept_)


def test_temperature_undoes_overconfidence():
    rng = np.random.default_rng(2)
    true_logit = rng.normal(size=(4000, 1))
    y = (rng.random((4000, 1)) < 1 / (1 + np.exp(-true_logit))).astype(float)
    t = fit_temperature(3.0 * true_logit[None], y)  # logits three times too confident
    assert t == pytest.approx(3.0, rel=0.1)


def _logreg():
    r = PrefillLogReg()
    r.columns_, r.mean_, r.scale_ = ["mean_01", "last_01"], np.zeros((2, 3)), np.ones((2, 3))
    r.coef_, r.intercept_ = np.ones((2, 3)), np.array([0.1, -0.2])
    return r


def _trunk():
    x = np.random.default_rng(3).normal(size=(30, 6))
    pre = Preprocessor(pca_dim=4).fit(x)
    nets = [SharedTrunkNet(4, 2, (8, 4), (0.1, 0.05)).eval() for _ in range(2)]
    r = TrunkRouter("prefill_trunk", ["mean_01", "last_01"]).fit(pre, nets)
    r.temperature_ = 0.7
    return r


@pytest.mark.parametrize("router", [
    ConstantRouter("best_single").fit(np.array([[1, 0], [0, NAN]], dtype=float)),
    ConstantRouter("cheapest", 1).fit(np.zeros((1, 2))), RandomRouter(2, seed=5), OracleRouter(),
    TaskPrior().fit(["a", "b"], np.array([[1, 0], [0, 1]], dtype=float)),
    SemanticKNN(ks=(2,)).fit(*([np.eye(3)[:, :2] + 0.1, np.array([[1, 0], [0, 1], [1, 1]], dtype=float)] * 2)),
    _logreg(),
    _trunk(),
], ids=lambda r: r.kind)
def test_every_router_round_trips(tmp_path, router):
    rng = np.random.default_rng(4)
    x = RouterInputs(n=5, prefill={"mean_01": rng.normal(size=(5, 3)), "last_01": rng.normal(size=(5, 3))},
                     semantic=rng.normal(size=(5, 2)), tasks=["a", "b", "a", "c", "b"],
                     scores=rng.integers(0, 2, size=(5, 2)).astype(float))
    if isinstance(router, TrunkRouter):
        x.prefill = {"mean_01": rng.normal(size=(5, 3)), "last_01": rng.normal(size=(5, 3))}
    before = router.predict_proba(x)
    assert before.shape == (5, 2)
    save_router(Storage(), str(tmp_path), router, {"targets": ["t0", "t1"]})
    loaded, manifest = load_router(Storage(), str(tmp_path))
    assert manifest["router"] == router.kind and type(loaded) is type(router)
    assert np.array_equal(loaded.predict_proba(x), before)


def test_call_costs_prefers_observed_and_estimates_the_rest():
    pool = Pool.model_validate({"models": [{"name": "a", "price_in_per_mtok": 1.0, "price_out_per_mtok": 2.0},
                                           {"name": "b", "price_in_per_mtok": 10.0, "price_out_per_mtok": 20.0}]})
    observed = np.array([[0.5, NAN], [NAN, NAN]])
    train_out = np.array([[100, NAN], [300, 50]], dtype=float)  # medians 200 and 50 output tokens
    c, how = call_costs(observed, ["x" * 400, "y" * 4000], pool, ["a", "b"], output_token_medians(train_out))
    # row 0: 100 input tokens; row 1: 1000. a: in 1e-6, out 2e-6 $/tok; b: 1e-5, 2e-5.
    want = [[0.5, 100 * 1e-5 + 50 * 2e-5], [1000e-6 + 200 * 2e-6, 1000 * 1e-5 + 50 * 2e-5]]
    assert np.allclose(c, want, rtol=1e-12)
    assert how == "observed cost_usd, else tokens x prices"


def test_report_of_a_perfect_and_a_constant_router():
    s = np.array([[1, 1], [0, 1], [0, 1], [1, 0]], dtype=float)  # cheap 0.5, dear 0.75
    c = np.tile([1.0, 3.0], (4, 1))
    rep, curves = build_report("toy", ["cheap", "dear"], s, c, {"oracle": s.copy(), "fixed": np.tile([0.2, 0.9], (4, 1))})
    assert rep["best_single"] == {"model": "dear", "accuracy": 0.75, "mean_cost": 3.0}
    assert rep["oracle"] == {"accuracy": 1.0, "mean_cost": 2.0}
    o, f = rep["routers"]["oracle"], rep["routers"]["fixed"]
    assert o["accuracy"] == 1.0 and o["gap_closed_pct"] == pytest.approx(100.0) and o["mean_auc"] == 1.0
    assert f["accuracy"] == 0.75 and f["mean_cost"] == 3.0 and f["mean_auc"] == 0.5 and f["gap_closed_pct"] == 0
    # RouteLLM's figures (two targets). The oracle sends q1, q2 to the dear model first: one call of
    # four (a share >= 12.5%, i.e. 13% on the 1% grid) recovers the whole gap. The fixed router's tie
    # keeps row order: q0 (no gain) then q1, so it needs two calls (38%).
    assert o["cpt50_pct"] == 13.0 and f["cpt50_pct"] == 38.0 and o["apgr"] > f["apgr"]


def test_distilled_student_reproduces_its_teacher():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(600, 10))
    pre = Preprocessor(pca_dim=8).fit(x[:400])
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    nets = [SharedTrunkNet(8, 3, (32, 16), (0.0, 0.0)).eval() for _ in range(3)]
    with torch.no_grad():  # a teacher with something to say: large weights
        for n in nets:
            n.net[0].weight.mul_(4.0)
            n.net[-1].weight.mul_(4.0)
    teacher = TrunkRouter("prefill_trunk", ["mean_01"]).fit(pre, nets)
    teacher.temperature_ = 1.3
    student = teacher.distil(x[:400], x[400:500], width=32, seed=0, mix=4)
    info = student.fit_info_
    assert student.kind == "prefill_trunk_distilled" and len(student.nets_) == 1 and student.temperature_ == 1.0
    held = RouterInputs(n=100, prefill={"mean_01": x[500:]})  # rows neither fit nor stopped on
    p_t, p_s = teacher.predict_proba(held), student.predict_proba(held)
    spread = p_t.std()
    assert spread > 0.05  # the teacher's outputs vary, so agreement is not trivial
    assert np.abs(p_s - p_t).mean() < 0.4 * spread  # measured 0.23; an untrained student: 1.05
    assert info["train_rows"] == 400 * 5 and 0 <= info["val_top1_agreement"] <= 1


def test_the_curves_figure_draws_the_served_router_against_the_baselines_then_the_rest():
    rng = np.random.default_rng(3)
    s = (rng.random((60, 3)) < [0.4, 0.6, 0.8]).astype(float)
    c = np.tile([1.0, 2.0, 5.0], (60, 1))
    names = ["prefill_trunk_mix", "prefill_trunk", "prefill_logreg", "task_prior", "semantic_mlp", "random", "oracle"]
    rep, curves = build_report("toy", ["a", "b", "c"], s, c, {n: rng.random((60, 3)) for n in names})
    rep["serving"] = "prefill_trunk_mix"
    first, rest = curve_panels(rep, curves)
    assert first == ["prefill_trunk_mix", "task_prior", "semantic_mlp", "random"]  # semantic_knn absent here
    assert rest == ["prefill_trunk_mix", "prefill_trunk", "prefill_logreg"]  # the oracle is a point
    rep["serving"] = "task_prior"  # the prior served: once in the first panel
    assert curve_panels(rep, curves)[0] == ["task_prior", "semantic_mlp", "random"]
    png = plot_curves(rep, curves)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
