import numpy as np

import pytest

from router_core.probes import fisher_separability, layer_profile, participation_ratio, select_columns


def test_isotropic_gaussian_has_full_effective_dimensionality():
    x = np.random.default_rng(0).normal(size=(5000, 20))
    assert 18.5 < participation_ratio(x, standardised=False) <= 20


def test_one_dominant_direction_has_effective_dimensionality_near_one():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 20))
    x[:, 3] *= 100.0  # like SmolLM2's few huge hidden dimensions
    assert participation_ratio(x, standardised=False) < 1.1
    assert participation_ratio(x, standardised=True) > 18  # standardising removes the artefact


def test_fisher_separability_known_answers():
    rng = np.random.default_rng(2)
    n, d = 4000, 10
    y = rng.integers(0, 2, n)
    noise = rng.normal(size=(n, d))
    same = fisher_separability(noise, y, pca_dim=d)
    shifted = noise.copy()
    shifted[:, 0] += 4.0 * y  # class means 4 within-class standard deviations apart on one axis
    far = fisher_separability(shifted, y, pca_dim=d)
    assert same < 0.02
    # One dimension, priors 1/2: J = p1 p0 delta^2 / sigma_w^2 = 0.25 * 16 = 4 (standardising keeps J).
    assert 3.6 < far < 4.4
    assert fisher_separability(shifted, np.zeros(n)) == 0.0


def test_layer_profile_ranks_the_informative_column_first_and_masks_missing():
    from router_core.probes import layer_profile, select_columns

    rng = np.random.default_rng(3)
    n = 600
    y = rng.integers(0, 2, (n, 2)).astype(float)
    good = rng.normal(size=(n, 8))
    good[:, 0] += 3 * y[:, 0]
    good[:, 1] += 3 * y[:, 1]
    noise = rng.normal(size=(n, 8))
    scores = y.copy()
    scores[:50, 1] = np.nan  # not measured: left out, not read as 0
    prof = layer_profile({"mean_01": noise, "last_05": good}, scores, ["a", "b"], pca_dim=8)
    assert [r["layer"] for r in prof] == [1, 5] and prof[1]["pooling"] == "last"
    assert prof[1]["fisher"]["a"] > 1.0 > 0.1 > prof[0]["fisher"]["a"]
    assert select_columns(prof, "top_k_mean", 1) == ["last_05"]
    assert select_columns(prof, "per_target") == ["last_05"]


def test_cv_auc_ranks_the_informative_column_first():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, size=(300, 2)).astype(float)
    cols = {"mean_01": rng.normal(size=(300, 8)), "mean_02": rng.normal(size=(300, 8))}
    cols["mean_02"][:, 0] += 2.0 * y[:, 0]  # column 2 tells target 0 apart
    prof = layer_profile(cols, y, ["t0", "t1"], pca_dim=8, cv_folds=3)
    r1, r2 = prof
    assert r2["cv_auc"]["t0"] > 0.8 and 0.35 < r1["cv_auc"]["t0"] < 0.65
    assert select_columns(prof, "cv_auc", 1) == ["mean_02"]
    with pytest.raises(ValueError, match="cv_folds"):
        select_columns(layer_profile(cols, y, ["t0", "t1"], pca_dim=8), "cv_auc", 1)
