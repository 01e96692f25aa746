"""Layer probes: how much a layer's features say about whether a target answers correctly.

- Effective dimensionality (diagnostic): the participation ratio of the covariance spectrum,
  ``d_eff = (sum lambda)^2 / sum lambda^2``; d for an isotropic cloud, 1 when one direction
  dominates.
- Fisher separability (selection criterion): ``J = trace((S_w + eps I)^-1 S_b)`` between the
  queries a target got right and those it got wrong, after standardisation and a PCA to a modest
  size for stability. S_w is the class-prior-weighted within-class covariance, S_b the
  class-prior-weighted scatter of the class means (the standard definitions).
"""

from __future__ import annotations

import numpy as np


def standardise(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Zero mean, unit variance per column.  (n, d) -> (n, d) float64."""
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean(axis=0)) / (x.std(axis=0) + eps)


def participation_ratio(x: np.ndarray, standardised: bool = True) -> float:
    """Effective dimensionality of the features' covariance.  (n, d) -> scalar in [1, d]."""
    z = standardise(x) if standardised else np.asarray(x, np.float64) - np.mean(x, axis=0)
    # The nonzero eigenvalues of the covariance are the squared singular values of z / sqrt(n-1).
    s = np.linalg.svd(z, compute_uv=False)
    lam = s**2 / max(len(z) - 1, 1)
    total = lam.sum()
    return float(total**2 / (lam**2).sum()) if total > 0 else 0.0


def pca_project(z: np.ndarray, k: int) -> np.ndarray:
    """Project standardised features onto their top-k principal directions.  (n, d) -> (n, k')."""
    k = min(k, z.shape[0] - 1, z.shape[1])
    _, _, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
    return z @ vt[:k].T


def fisher_separability(x: np.ndarray, y: np.ndarray, pca_dim: int = 64, eps: float = 1e-3) -> float:
    """J between y == 1 and y == 0 rows.  x (n, d), y (n,) in {0, 1} -> scalar >= 0.

    Returns 0.0 when a class has fewer than two rows (nothing to separate).
    """
    y = np.asarray(y).astype(bool)
    if y.sum() < 2 or (~y).sum() < 2:
        return 0.0
    z = pca_project(standardise(x), pca_dim)
    p1 = y.mean()
    mu = z.mean(axis=0)
    s_w = np.zeros((z.shape[1], z.shape[1]))
    s_b = np.zeros_like(s_w)
    for mask, p in ((y, p1), (~y, 1 - p1)):
        zc = z[mask]
        d = zc - zc.mean(axis=0)
        s_w += p * (d.T @ d) / len(zc)
        m = (zc.mean(axis=0) - mu)[:, None]
        s_b += p * (m @ m.T)
    return float(np.trace(np.linalg.solve(s_w + eps * np.eye(len(s_w)), s_b)))


def cv_probe_auc(z: np.ndarray, y: np.ndarray, folds: int = 3, seed: int = 0) -> float | None:
    """Cross-validated ROC-AUC of a logistic-regression probe (stratified folds) on features z.

    None when a class has fewer rows than folds.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from .metrics import roc_auc

    y = np.asarray(y).astype(int)
    if min(y.sum(), len(y) - y.sum()) < folds:
        return None
    pred = np.zeros(len(y))
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(z, y):
        pred[te] = LogisticRegression(C=1.0, max_iter=300).fit(z[tr], y[tr]).decision_function(z[te])
    return roc_auc(pred, y)


def layer_profile(columns: dict[str, np.ndarray], scores: np.ndarray, targets: list[str],
                  pca_dim: int = 64, eps: float = 1e-3, cv_folds: int = 0) -> list[dict]:
    """d_eff and Fisher J of every feature column for every target.

    ``columns``: name (``mean_12``) -> (n, d) features of the training rows; ``scores``: (n, K) with
    NaN where a target was not measured (those rows are left out for that target, never read as
    0); a score >= 0.5 counts as correct. Returns one dict per column, in the given order. With
    ``cv_folds`` > 1 each column also gets the cross-validated probe AUC per target (``cv_auc``).
    """
    out = []
    for name, x in columns.items():
        z = standardise(x)
        zp = pca_project(z, pca_dim)
        per_target = {}
        for k, t in enumerate(targets):
            m = ~np.isnan(scores[:, k])
            per_target[t] = fisher_separability(zp[m], scores[m, k] >= 0.5, pca_dim=pca_dim, eps=eps)
        pooling, _, layer = name.rpartition("_")
        extra = {}
        if cv_folds > 1:
            aucs = {}
            for k, t in enumerate(targets):
                m = ~np.isnan(scores[:, k])
                aucs[t] = cv_probe_auc(zp[m], scores[m, k] >= 0.5, cv_folds)
            known = [a for a in aucs.values() if a is not None]
            extra = {"cv_auc": aucs, "cv_auc_mean": float(np.mean(known)) if known else 0.5}
        out.append({
            "column": name, "pooling": pooling, "layer": int(layer),
            "d_eff": participation_ratio(z, standardised=False),
            "d_eff_raw": participation_ratio(x, standardised=False),
            "fisher_mean": float(np.mean(list(per_target.values()))),
            "fisher": per_target,
            **extra,
        })
    return out


def select_columns(profile: list[dict], strategy: str = "top_k_mean", k: int = 3) -> list[str]:
    """Columns to keep: ``top_k_mean`` (highest mean J), ``per_target`` (each target's best J),
    ``cv_auc`` (highest mean cross-validated probe AUC; the profile must hold it) or ``all``."""
    if strategy == "all":
        return [r["column"] for r in profile]
    if strategy == "top_k_mean":
        return [r["column"] for r in sorted(profile, key=lambda r: -r["fisher_mean"])[:k]]
    if strategy == "cv_auc":
        if profile and "cv_auc_mean" not in profile[0]:
            raise ValueError("the cv_auc strategy needs a profile computed with cv_folds > 1")
        return [r["column"] for r in sorted(profile, key=lambda r: -r["cv_auc_mean"])[:k]]
    if strategy == "per_target":
        targets = list(profile[0]["fisher"]) if profile else []
        best = {max(profile, key=lambda r: r["fisher"][t])["column"] for t in targets}
        return [r["column"] for r in profile if r["column"] in best]
    raise ValueError(f"unknown layer selection strategy {strategy!r} (top_k_mean, per_target, cv_auc, all)")
