"""A new target from a few hundred labelled answers, without retraining the pool (``onboard``).

The routers of a trained model stay as they are, bit for bit; the new target's column comes from a
head fitted on its labels alone (routers.Head, routers.Onboarded):

- ``prior``: the mean of the labels in the query's task, shrunk toward their overall mean by
  ``prior_weight`` pseudo-labels (the overall mean where the task is unknown or there are none);
- ``similar``: a logistic regression of the labels on the standardised logits of the served
  router's probabilities for the pool's targets: a new model is right where the models like it are
  right, and the served router already knows, from every training row, where each of those is. The
  L2 strength is chosen by cross-validation on the labels.

Both are calibrated by construction (fitted by log loss), so the new column is on the scale of the
others when the policy compares them. The similar head serves unless the prior head's out-of-fold log
loss on the labels (a proper score: ordering and calibration both) is lower by more than
``margin_se`` standard errors. The rows the heads read the served
router's probabilities on are out of fold where the model kept them (MODEL/held_out.parquet: each
training row predicted by a refit that did not see it), so the regression learns how the served
router's probabilities behave on rows it has not seen.

A target added from few labels can make the pool route worse (docs/onboarding.md: LLMRouter-9's
best target from 200 labels, 0.098 against 0.121 without it), so ``pool_gain`` measures, on the
labelled rows measured on every target, the pool's P-AUCCC with the new column (out of fold) and
without it, on the whole pool's cost axis; ``onboard`` adds the target only where it does not lower
it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import metrics as M
from .dataset import Dataset
from .features import load_features
from .held_out import from_table
from .model import logit
from .model_index import ModelIndex
from .routers import Head, RouterInputs, load_router, predict_any, prefill_columns
from .storage import Storage, join

HEADS = ("similar", "prior")  # the first serves unless another is clearly better out of fold
CS = np.logspace(-4, 2, 13)  # inverse L2 strengths of the similar head, chosen by cross-validation


def row_log_loss(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-row cross-entropy of probabilities ``p`` against labels ``y`` in [0, 1] (graded ones too)."""
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y, np.float64)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    return float(row_log_loss(p, y).mean())


def fit_prior(tasks: list[str | None] | None, y: np.ndarray, weight: float) -> Head:
    """The labels' mean per task, shrunk toward their overall mean by ``weight`` pseudo-labels."""
    y = np.asarray(y, np.float64)
    overall = float(y.mean())
    if tasks is None:
        return Head("prior", fallback=overall)
    arr = np.array([str(t) if t is not None else None for t in tasks], dtype=object)
    names = sorted({t for t in arr if t is not None})
    table = np.array([(y[arr == t].sum() + weight * overall) / ((arr == t).sum() + weight) for t in names])
    return Head("prior", tasks=names, table=table.reshape(-1), fallback=overall)


def fit_similar(base: np.ndarray, y: np.ndarray, folds: int, seed: int) -> tuple[Head, float]:
    """A logistic regression of ``y`` (labels in [0, 1], >= 0.5 counts as right) on the standardised
    logits of ``base`` (n, K), C by ``folds``-fold cross-validated log loss; (the head, its C)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    z = logit(base)
    mean, scale = z.mean(axis=0), z.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    zs, right = (z - mean) / scale, np.asarray(y) >= 0.5
    minority = int(min(right.sum(), (~right).sum()))
    if minority < 2:  # nothing to regress on: the overall mean
        return Head("similar", mean=mean, scale=scale, w=np.zeros(z.shape[1]), b=float(logit(np.array([right.mean()]))[0])), 0.0
    cv = StratifiedKFold(min(folds, minority), shuffle=True, random_state=seed)
    losses = []
    for c in CS:
        loss = 0.0
        for tr, te in cv.split(zs, right):
            m = LogisticRegression(C=c, max_iter=2000).fit(zs[tr], right[tr])
            loss += log_loss(m.predict_proba(zs[te])[:, 1], right[te].astype(float)) * len(te)
        losses.append(loss)
    c = float(CS[int(np.argmin(losses))])
    m = LogisticRegression(C=c, max_iter=2000).fit(zs, right)
    return Head("similar", mean=mean, scale=scale, w=m.coef_[0].astype(np.float64), b=float(m.intercept_[0])), c


def fit_head(kind: str, base: np.ndarray, tasks: list | None, y: np.ndarray, prior_weight: float, folds: int,
             seed: int) -> tuple[Head, dict]:
    if kind == "prior":
        return fit_prior(tasks, y, prior_weight), {}
    head, c = fit_similar(base, y, folds, seed)
    return head, {"C": c}


@dataclass
class HeadChoice:
    head: Head
    kind: str
    oof: np.ndarray  # (n,) the chosen head's out-of-fold probabilities on the labelled rows
    table: dict  # kind -> {"oof_log_loss", "oof_auc"}
    info: dict


def choose_head(base: np.ndarray, tasks: list | None, y: np.ndarray, prior_weight: float = 10.0, folds: int = 5,
                seed: int = 0, kinds: tuple[str, ...] = HEADS, margin_se: float = 2.0) -> HeadChoice:
    """Each head kind's out-of-fold probabilities on the labelled rows (``folds`` stratified parts; a
    similar head chooses its C inside each part's fit), and the choice, refitted on every label: the
    first of ``kinds`` (the similar head, which reads what the pool knows of each query), unless
    another's out-of-fold log loss is lower by more than ``margin_se`` standard errors of their
    paired per-row difference. A few hundred labels measure a log-loss difference to about +-0.02;
    chosen on the lowest mean alone, the prior head won by noise and cost 0.04-0.07 test AUC on
    LLMRouter-9 (docs/onboarding.md)."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y, np.float64)
    right = y >= 0.5
    minority = int(min(right.sum(), (~right).sum()))
    parts = list(StratifiedKFold(max(2, min(folds, minority)), shuffle=True, random_state=seed).split(base, right)) \
        if minority >= 2 else [(np.arange(len(y)), np.arange(len(y)))]
    table, oofs, rows = {}, {}, {}
    for kind in kinds:
        oof = np.zeros(len(y))
        for tr, te in parts:
            h, _ = fit_head(kind, base[tr], None if tasks is None else [tasks[i] for i in tr], y[tr], prior_weight,
                            folds, seed)
            oof[te] = h.predict(base[te], None if tasks is None else [tasks[i] for i in te])
        oofs[kind], rows[kind] = oof, row_log_loss(oof, y)
        table[kind] = {"oof_log_loss": float(rows[kind].mean()), "oof_auc": M.roc_auc(oof, right.astype(float))}
    kind = kinds[0]
    for other in kinds[1:]:
        d = rows[other] - rows[kinds[0]]
        se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
        table[other].update(vs_first=float(d.mean()), se=se)
        if d.mean() < -margin_se * se and table[other]["oof_log_loss"] < table[kind]["oof_log_loss"]:
            kind = other
    head, info = fit_head(kind, base, tasks, y, prior_weight, folds, seed)
    return HeadChoice(head, kind, oofs[kind], table, dict(info, parts=len(parts), margin_se=margin_se))


def pool_gain(base: np.ndarray, new: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> dict:
    """The pool's P-AUCCC on these rows with the new column (``new``, out of fold) beside ``base``'s
    (n, K), and without it, both on the whole pool's cost axis (the singles of every target, the new
    one last in ``scores`` and ``costs``, (n, K + 1)): a pool without its cheapest target has a
    dearer floor, and only the whole pool's axis compares the two."""
    singles = M.single_points(scores, costs)
    k = base.shape[1]
    without = M.p_auccc_of(M.threshold_curve(base, scores[:, :k], costs[:, :k]), singles)
    with_ = M.p_auccc_of(M.threshold_curve(np.column_stack([base, new]), scores, costs), singles)
    return {"rows": int(len(scores)), "p_auccc_with": float(with_), "p_auccc_without": float(without),
            "gain": float(with_ - without)}


def served_proba(storage: Storage, model: str, index: ModelIndex, name: str, ds: Dataset, features: str,
                rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The router ``name``'s (len(rows), K) probabilities on dataset rows ``rows``: out of fold where
    the model kept them (held_out), else predicted; (proba, has features, was out of fold)."""
    router, _ = load_router(storage, index.folder(model, name))
    q = ds.queries
    cols = prefill_columns(router)
    fs = load_features(storage, features, q, cols) if cols else None
    have = fs.present[rows] if fs is not None else np.ones(len(rows), bool)
    tasks_all = q.column("task").to_pylist()
    proba = np.full((len(rows), len(index.targets)), np.nan)
    if have.any():  # predicted on the rows with features
        keep = rows[have]
        tasks = [tasks_all[i] for i in keep] if any(t is not None for t in tasks_all) else None
        x = RouterInputs(n=len(keep), prefill={c: v[keep] for c, v in fs.columns.items()} if fs else {}, tasks=tasks)
        if "task_prior" in index.routers and tasks is not None:
            x.prior = predict_any(load_router(storage, index.folder(model, "task_prior"))[0], x)
        proba[have] = predict_any(router, x)
    oof = np.zeros(len(rows), bool)
    if index.held_out and storage.exists(join(model, index.held_out)):
        held, ids, targets = from_table(storage.read_table(join(model, index.held_out)), join(model, index.held_out))
        if targets == index.targets and name in held.proba:
            at = {qid: i for i, qid in enumerate(ids)}
            qids = q.column("query_id").to_pylist()
            for j, r in enumerate(rows):
                if qids[r] in at:
                    proba[j], oof[j], have[j] = held.proba[name][at[qids[r]]], True, True
    return proba, have, oof
