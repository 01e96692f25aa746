import numpy as np
import pytest

from router_core.artifacts import check_features_match
from router_core.errors import ArtifactError
from router_core.model import Preprocessor, SharedTrunkNet, predict_proba
from router_core.routers import TrunkRouter, load_router, save_router
from router_core.storage import Storage


def _save(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 10))
    pre = Preprocessor(pca_dim=4).fit(x)
    nets = [SharedTrunkNet(4, 3, (8, 4), (0.1, 0.1)).eval() for _ in range(2)]
    m = save_router(Storage(), str(tmp_path), TrunkRouter("prefill_trunk", ["mean_01"]).fit(pre, nets),
                    {"targets": ["a", "b", "c"], "features_settings_key": "k1"})
    return x, pre, nets, m


def test_round_trip_gives_the_same_predictions(tmp_path):
    x, pre, nets, m = _save(tmp_path)
    r, m2 = load_router(Storage(), str(tmp_path))
    assert m2 == m and m2["members"] == 2
    assert np.array_equal(predict_proba(nets, pre.transform(x)), predict_proba(r.nets_, r.pre_.transform(x)))


def test_tampered_weights_are_refused(tmp_path):
    _save(tmp_path)
    w = tmp_path / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the manifest"):
        load_router(Storage(), str(tmp_path))


def test_features_of_another_encoder_are_refused():
    m = {"features_settings_key": "k1", "columns": ["mean_01"], "encoder": {"identity": "enc-a"}}
    check_features_match(m, {"settings_key": "k1", "columns": ["mean_01", "last_01"]})
    with pytest.raises(ArtifactError, match="other settings"):
        check_features_match(m, {"settings_key": "k2", "columns": ["mean_01"], "encoder": {"identity": "enc-b"}})
    with pytest.raises(ArtifactError, match="lack the model's column"):
        check_features_match(m, {"settings_key": "k1", "columns": ["last_01"]})
