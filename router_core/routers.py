"""Every router behind one interface: ``predict_proba(inputs) -> (n, K)`` P(correct) per target.

The prefill SharedTrunkNet and its baselines:

==================  ===========================================================================
``prefill_trunk``   SharedTrunkNet ensemble on the encoder's hidden states (optionally tempered)
``prefill_logreg``  per target, a logistic regression on that target's best layer by Fisher J
``*_mix``           a router mixed with the task prior (``MixRouter``); ``prefill_mix_mean``: the mixes' mean
``semantic_mlp``    SharedTrunkNet on all-MiniLM-L6-v2 sentence embeddings
``semantic_knn``    mean score of the k nearest training queries by cosine (k chosen on val)
``task_prior``      per-task mean score of each target on train (global mean for unseen tasks)
``best_single``     every target's mean training score, for every query (= always the best)
``cheapest``        always the cheapest target; ``most_expensive`` likewise
``random``          uniform random probabilities (seeded)
``oracle``          the observed scores themselves (an upper bound; needs the labels)
==================  ===========================================================================

Estimator habits (as scikit-learn's): ``__init__`` only stores settings, ``fit(...)`` returns
``self``, learned state ends in ``_``, what the fit chose is in ``fit_info_``. A router's learned
state is arrays (safetensors) plus JSON; ``ROUTERS[kind].from_state`` rebuilds it. ``ORDER`` is the
one list of router names, in the order reports show them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ArtifactError
from .model import FusedTrunk, Preprocessor, SharedTrunkNet, bce, ensemble_proba, fit_temperature, logit, predict_logits


@dataclass
class RouterInputs:
    """What routers read for n queries; each router takes the parts it needs."""

    n: int
    prefill: dict[str, np.ndarray] = field(default_factory=dict)  # feature column -> (n, d)
    semantic: np.ndarray | None = None  # (n, d) sentence embeddings
    tasks: list[str | None] | None = None
    scores: np.ndarray | None = None  # (n, K) observed scores: only the oracle reads them
    prior: np.ndarray | None = None  # (n, K) the task prior's probabilities, an optional trunk input


def _need(value, what: str, router: str):
    if value is None:
        raise ArtifactError(f"router {router} needs {what}, which were not given")
    return value


class Router:
    kind: str = ""
    needs: tuple[str, ...] = ()  # subset of ("prefill", "semantic", "tasks", "scores")
    fit_info_: dict = {}

    def fit(self, *args, **kwargs) -> "Router":  # routers with nothing to learn
        return self

    def predict_proba(self, x: RouterInputs) -> np.ndarray:
        raise NotImplementedError

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, JSON-able settings) that ``from_state`` turns back into this router."""
        return {}, {}

    @classmethod
    def from_state(cls, tensors: dict[str, np.ndarray], meta: dict) -> "Router":
        raise NotImplementedError


# -- fixed and reference routers --------------------------------------------------------------
class ConstantRouter(Router):
    """The same probabilities for every query: every target's mean training score (``target`` None,
    the best single), or certainty for one target (``target`` k: always that one)."""

    def __init__(self, kind: str, target: int | None = None):
        self.kind, self.target = kind, target

    def fit(self, train_scores: np.ndarray) -> "ConstantRouter":
        if self.target is None:
            self.proba_ = np.nanmean(train_scores, axis=0).astype(np.float64)
        else:
            self.proba_ = np.zeros(train_scores.shape[1])
            self.proba_[self.target] = 1.0
        return self

    def predict_proba(self, x: RouterInputs) -> np.ndarray:
        return np.tile(self.proba_, (x.n, 1))

    def state(self):
        return {"proba": self.proba_}, {"target": self.target}

    @classmethod
    def from_state(cls, tensors, meta):
        r = cls(meta["router"], meta.get("target"))
        r.proba_ = np.asarray(tensors["proba"], np.float64)
        return r


class RandomRouter(Router):
    kind = "random"

    def __init__(self, n_targets: int, seed: int = 0):
        self.n_targets, self.seed = n_targets, seed

    def predict_proba(self, x: RouterInputs) -> np.ndarray:
        return np.random.default_rng(self.seed).random((x.n, self.n_targets))

    def state(self):
        return {}, {"n_targets": self.n_targets, "seed": self.seed}

    @classmethod
    def from_state(cls, tensors, meta):
        return cls(meta["n_targets"], meta["seed"])


class OracleRouter(Router):
    kind = "oracle"
    needs = ("scores",)

    def predict_proba(self, x: RouterInputs) -> np.ndarray:
        return np.asarray(_need(x.scores, "the observed scores", self.kind), np.float64)

    @classmethod
    def from_state(cls, tensors, meta):
        return cls()


class TaskPrior(Router):
    """Per-task mean training score of each target; tasks unseen in training get the global mean."""

    kind = "task_prior"
    needs = ("tasks",)

    def fit(self, tasks: list[str | None], scores: np.ndarray) -> "TaskPrior":
        self.tasks_ = sorted({t for t in tasks if t is not None})
        arr = np.array(tasks, dtype=object)
        self.fallback_ = _nanmean0(scores, 0.5)
        self.table_ = np.stack([_nanmean0(scores[arr == t], self.fallback_) for t in self.tasks_]) if self.tasks_ \
            else np.zeros((0, len(self.fallback_)))
        return self

    def predict_proba(self, x: RouterInputs) -> np.ndarray:
        return self.prior(_need(x.tasks, "a task per query", self.kind), x.n)

    def prior(self, tasks: list[str | None] | None, n: int) -> np.ndarray:
        """(n, K) the prior of each query's task; the global mean where the task is unknown or unseen
        (every row when ``tasks`` is None: a query set without a task column)."""
        if tasks is None:
            return np.tile(self.fallback_, (n, 1))
        index = {t: i for i, t in enumerate(self.tasks_)}
        rows = np.array([index.get(t, -1) for t in tasks], dtype=np.int64)
        table = np.vstack([self.table_, self.fallback_[None]])  # row -1: the global mean
        return table[rows] if n else np.zeros((0, len(self.fallback_)))

    def state(self):
        return {"table": self.table_, "fallback": self.fallback_}, {"tasks": self.tasks_}

    @classmethod
    def from_state(cls, tensors, meta):
        r = cls()
        r.tasks_, r.table_, r.fallback_ = list(meta["tasks"]), np.asarray(tensors["table"]), np.asarray(tensors["fallback"])
        return r


def _nanmean0(scores: np.ndarray, fallback) -> np.ndarray:
    """Column means ignoring NaN; ``fallback`` where a column has no value."""
    n = (~np.isnan(scores)).sum(axis=0)
    s = np.nansum(scores, axis=0)
    return np.where(n > 0, s / np.maximum(n, 1), fallback)


# -- semantic routers -------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


class SemanticKNN(Router):
    """Mean score of the k most cosine-similar training queries, smoothed towards the global mean
    with ``alpha`` pseudo-neighbours (so no probability is exactly 0 or 1); k chosen among ``ks``
    by validation BCE."""

    kind = "semantic_knn"
    needs = ("semantic",)

    def __init__(self, ks=(5, 10, 20, 50, 100), alpha: float = 1.0):
        self.ks, self.alpha = tuple(ks), alpha

    def _set(self, emb: np.ndarray, scores: np.ndarray, k: int) -> "SemanticKNN":
        self.emb_, self.scores_, self.k_ = _unit(emb), np.asarray(scores, np.float32), int(k)
        self.prior_ = _nanmean0(self.scores_, 0.5)
        return self

    def fit(self, emb_tr, s_tr, emb_va, s_va) -> "SemanticKNN":
        losses = {}
        for k in self.ks:
            if k <= len(emb_tr):
                losses[k] = bce(self._set(emb_tr, s_tr, k).predict_emb(emb_va), s_va)
        self._set(emb_tr, s_tr, min(losses, key=losses.get))
        self.fit_info_ = {"val_bce_by_k": {str(k): v for k, v in losses.items()}}
        return self

    def predict_emb(self, emb: np.ndarray, chunk: int = 4096) -> np.ndarray:
        q = _unit(emb)
        out = np.empty((len(q), self.scores_.shape[1]))
        measured = ~np.isnan(self.scores_)
        filled = np.where(measured, self.scores_, 0.0)
        for i in range(0, len(q), chunk):
            sim = q[i : i + chunk] @ self.emb_.T
            nn = np.argpartition(-sim, self.k_ - 1, axis=1)[:, : self.k_]
            s = filled[nn].sum(axis=1)
            c = measured[nn].sum(axis=1)
            out[i : i + chunk] = (s + self.alpha * self.prior_) / (c + self.alpha)
        return out

    def predict_proba(self, x: RouterInputs) -> np.ndarray:
        return self.predict_emb(_need(x.semantic, "sentence embeddings", self.kind))

    def state(self):
        return {"emb": self.emb_, "scores": self.scores_}, {"k": self.k_, "alpha": self.alpha}

    @classmethod
    def from_state(cls, tensors, meta):
        return cls((meta["k"],), meta["alpha"])._set(tensors["emb"], tensors["scores"], meta["k"])


def nest(prefix: str, router: Router) -> tuple[dict[str, np.ndarray], dict]:
    """A component router's state under ``prefix.`` (tensors) and its settings with its kind."""
    tensors, meta = router.state()
    return {f"{prefix}.{k}": v for k, v in tensors.items()}, dict(meta, router=router.kind)


def unnest(prefix: str, tensors: dict[str, np.ndarray], meta: dict, targets: list[str]) -> Router:
    """The component saved by ``nest(prefix, ...)``; ``meta`` its settings."""
    sub = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    if meta.get("router") not in ROUTERS:
        raise ArtifactError(f"unknown component router kind {meta.get('router')!r}")
    return ROUTERS[meta["router"]].from_state(sub, dict(meta, targets=targets))


# -- networks (prefill or semantic inputs) -----------------------------------------------------
class TrunkRouter(Router):
    """A SharedTrunkNet ensemble over concatenated inputs, probabilities averaged over members,
    each member's logits divided by the temperature. Inputs (``columns``): prefill feature columns,
    ``semantic`` (the sentence embedding) and ``task_prior`` (the task prior's probabilities).

    The members are trained elsewhere (data-parallel, router_core.training); ``fit`` takes them and
    fits the temperature on validation."""

    EXTRA = ("semantic", "task_prior")

    def __init__(self, kind: str, columns: list[str], temperature: bool = True, offset: TaskPrior | None = None):
        """``offset``: a residual trunk, whose logits are added to the logit of this prior (the task
        prior; the global mean for a query whose task is unknown, or for a query set without tasks)."""
        self.kind, self.columns, self.temperature, self.offset = kind, list(columns), temperature, offset
        self.needs = tuple(n for n, on in (("prefill", any(c not in self.EXTRA for c in self.columns)),
                                           ("semantic", "semantic" in self.columns),
                                           ("tasks", "task_prior" in self.columns)) if on)

    def fit(self, pre: Preprocessor, nets: list[SharedTrunkNet], z_va: np.ndarray | None = None,
            s_va: np.ndarray | None = None, o_va: np.ndarray | None = None) -> "TrunkRouter":
        """Members ``nets`` on ``pre``'s space; with validation rows (``z_va`` preprocessed, scores
        ``s_va``, a residual trunk's offsets ``o_va``) and ``temperature`` on, the temperature
        minimising their BCE (T = 1 otherwise)."""
        self.pre_, self.nets_, self.temperature_, self._fused = pre, nets, 1.0, None
        if z_va is not None and s_va is not None:
            from . import metrics as M

            logits = predict_logits(nets, z_va) + (0.0 if o_va is None else o_va[None])
            info = {"temperature": 1.0, "val_ece_before": M.ece(ensemble_proba(logits, 1.0), s_va),
                    "val_bce_before": bce(ensemble_proba(logits, 1.0), s_va)}
            if self.temperature:
                self.temperature_ = fit_temperature(logits, s_va)
            info.update(temperature=self.temperature_, val_ece_after=M.ece(ensemble_proba(logits, self.temperature_), s_va),
                        val_bce_after=bce(ensemble_proba(logits, self.temperature_), s_va))
            self.fit_info_ = info
        return self

    def design(self, x: RouterInputs) -> np.ndarray:
        parts = []
        for c in self.columns:
            if c == "semantic":
                parts.append(_need(x.semantic, "sentence embeddings", self.kind))
            elif c == "task_prior":
                parts.append(_need(x.prior, "the task prior's probabilities", self.kind))
            elif c in x.prefill:
                parts.append(x.prefill[c])
            else:
                raise ArtifactError(f"router {self.kind} needs feature column {c}")
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)  # one column: no copy

    def logits(self, x: RouterInputs) -> np.ndarray:
        """(members, n, K) untempered logits."""
        if self._fused is None:
            self._fused = FusedTrunk(self.pre_, self.nets_)
        z = self._fused.logits(self.design(x))
        return z + self.offset_logits(x)[None] if self.offset is not None else z

    def offset_logits(self, x: RouterInputs) -> np.ndarray:
        """(n, K) the residual trunk's offsets (its prior's logits)."""
        return logit(self.offset.prior(x.tasks, x.n)).astype(np.float32)

    def predict_proba(self, x: RouterInputs) -> np.ndarray:
        return ensemble_proba(self.logits(x), self.temperature_)

    def distil(self, x_tr: np.ndarray, x_va: np.ndarray, width: int, seed: int = 0, mix: int = 4,
               max_epochs: int = 300, patience: int = 20) -> "TrunkRouter":
        """One narrow net trained to reproduce this ensemble's tempered probabilities (soft targets),
        on its preprocessor's space: the serving form, ~members x fewer operations per query.

        ``x_tr``/``x_va``: design rows (``design``) of the train and val splits; the train rows are
        augmented with ``mix`` x as many random convex mixtures of pairs (the teacher labels them too).
        Early stopping on the val rows' BCE against the teacher; what it reached is in ``fit_info_``."""
        from .model import TrainParams, fit_trunk

        rng = np.random.default_rng(seed)
        if self.offset is not None:
            raise ValueError("distillation of a residual trunk is not supported")
        z_tr, z_va = self.pre_.transform(x_tr), self.pre_.transform(x_va)
        if mix and len(z_tr) > 1:
            i, j = rng.integers(0, len(z_tr), (2, mix * len(z_tr)))
            lam = rng.uniform(0, 1, (len(i), 1)).astype(np.float32)
            z_tr = np.concatenate([z_tr, lam * z_tr[i] + (1 - lam) * z_tr[j]])
        p_tr, p_va = (ensemble_proba(predict_logits(self.nets_, z), self.temperature_) for z in (z_tr, z_va))
        params = TrainParams(lr=3e-3, weight_decay=0.0, widths=(width,), dropouts=(0.0,), max_epochs=max_epochs,
                             patience=patience)
        net, val_bce, epochs = fit_trunk(z_tr, p_tr, z_va, p_va, params, seed)
        student = TrunkRouter(self.kind + "_distilled", self.columns, temperature=False).fit(self.pre_, [net])
        p_st = ensemble_proba(predict_logits([net], z_va))
        student.fit_info_ = {"teacher": self.kind, "width": width, "train_rows": len(z_tr), "mix": mix,
                             "epochs": epochs, "val_bce_vs_teacher": val_bce,
                             "val_max_abs_diff": float(np.abs(p_st - p_va).max()),
                             "val_top1_agreement": float((p_st.argmax(1) == p_va.argmax(1)).mean())}
        return student

    def state(self):
        from .artifacts import trunk_tensors

        net = self.nets_[0].net
        tensors, meta = trunk_tensors(self.pre_, self.nets_), {
            "columns": self.columns, "members": len(self.nets_), "temperature": self.temperature_,
            "widths": [m.out_features for m in net if hasattr(m, "out_features")][:-1],
            "dropouts": [m.p for m in net if hasattr(m, "p")]}
        if self.offset is not None:
            t, meta["offset"] = nest("offset", self.offset)
            tensors.update(t)
        return tensors, meta

    @classmethod
    def from_state(cls, tensors, meta):
        from .artifacts import trunk_from_tensors

        pre, nets = trunk_from_tensors({k: v for k, v in tensors.items() if not k.startswith("offset.")},
                                       meta["members"], len(meta["targets"]), meta["widths"], meta["dropouts"])
        offset = unnest("offset", tensors, meta["offset"], meta["targets"]) if meta.get("offset") else None
        r = cls(meta["router"], meta["columns"], offset=offset).fit(pre, nets)
        r.temperature_ = meta.get("temperature", 1.0)
        return r


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class PrefillLogReg(Router):
    """Per target: standardise its best prefill column (by Fisher J on train), logistic regression
    with C chosen among ``cs`` on validation.

    Graded scores become two weighted rows (label 1 with weight s, label 0 with weight 1 - s);
    unmeasured (NaN) rows are left out of that target's fit.
    """

    kind = "prefill_logreg"
    needs = ("prefill",)

    def __init__(self, cs=(0.001, 0.01, 0.1, 1.0), max_iter: int = 1000):
        self.cs, self.max_iter = tuple(cs), max_iter

    def fit(self, columns: list[str], x_tr: dict[str, np.ndarray], s_tr: np.ndarray, x_va: dict[str, np.ndarray],
            s_va: np.ndarray, c_fixed: list | None = None) -> "PrefillLogReg":
        """``columns``: one per target; ``x_tr``/``x_va``: those columns' train and val rows.
        ``c_fixed``: per target the C an earlier fit chose (None: it fitted a constant), fitted
        without choosing again: a refit on other rows (training.cross_fit) at a fraction of the time."""
        from sklearn.linear_model import LogisticRegression

        K = s_tr.shape[1]
        d = x_tr[columns[0]].shape[1]
        mean, scale, coef, icpt = np.zeros((K, d)), np.ones((K, d)), np.zeros((K, d)), np.zeros(K)
        chosen = []
        for k, col in enumerate(columns):
            m = ~np.isnan(s_tr[:, k])
            mu, sd = x_tr[col][m].mean(axis=0), x_tr[col][m].std(axis=0) + 1e-6
            z = (x_tr[col][m] - mu) / sd
            y = s_tr[m, k]
            zz, yy, ww = np.concatenate([z, z]), np.r_[np.ones(len(y)), np.zeros(len(y))], np.r_[y, 1 - y]
            mv = ~np.isnan(s_va[:, k])
            zv = (x_va[col][mv] - mu) / sd
            best = None
            # The C path from strong to weak regularisation, each fit starting from the previous one's
            # solution: on nearly separable rows (a target rarely right, hundreds of dimensions) a cold
            # start at large C does not converge within max_iter.
            lr = LogisticRegression(max_iter=self.max_iter, warm_start=True)
            path = sorted(self.cs) if c_fixed is None else [c for c in sorted(self.cs)
                                                             if c_fixed[k] is not None and c <= c_fixed[k]]
            for c in path:
                if yy[ww > 0].min() == yy[ww > 0].max():  # one class only: a constant
                    break
                lr.set_params(C=c).fit(zz, yy, sample_weight=ww)
                if c_fixed is not None:  # the path's last C is the one fixed
                    best = (0.0, c, lr.coef_[0].copy(), float(lr.intercept_[0]))
                    continue
                loss = bce(lr.predict_proba(zv)[:, 1:2], s_va[mv, k : k + 1]) if mv.any() else 0.0
                if best is None or loss < best[0]:
                    best = (loss, c, lr.coef_[0].copy(), float(lr.intercept_[0]))
            mean[k], scale[k] = mu, sd
            if best is None:
                icpt[k] = np.log(max(y.mean(), 1e-4) / max(1 - y.mean(), 1e-4))
                chosen.append(None)
            else:
                coef[k], icpt[k] = best[2], best[3]
                chosen.append(best[1])
        self.columns_, self.mean_, self.scale_, self.coef_, self.intercept_ = list(columns), mean, scale, coef, icpt
        self.fit_info_ = {"C": chosen}
        return self

    def predict_proba(self, x: RouterInputs) -> np.ndarray:
        out = np.empty((x.n, len(self.columns_)))
        for k, col in enumerate(self.columns_):
            if col not in x.prefill:
                raise ArtifactError(f"router {self.kind} needs feature column {col}")
            z = (x.prefill[col] - self.mean_[k]) / self.scale_[k]
            out[:, k] = _sigmoid(z @ self.coef_[k] + self.intercept_[k])
        return out

    def state(self):
        return {"mean": self.mean_, "scale": self.scale_, "coef": self.coef_, "intercept": self.intercept_}, \
            {"columns": self.columns_}

    @classmethod
    def from_state(cls, tensors, meta):
        r = cls()
        r.columns_ = list(meta["columns"])
        r.mean_, r.scale_, r.coef_, r.intercept_ = (tensors[k] for k in ("mean", "scale", "coef", "intercept"))
        return r


# -- blends of routers (calibration, shrinkage toward the prior, stacking) ----------------------
class BlendRouter(Router):
    """A logistic blend of other routers' logits, fitted on validation rows:
    ``p_k = sigmoid(sum_j w[k, j] * logit(p_j[:, k]) + b[k])``.

    One component is Platt scaling (per target with ``per_target``); a router and the prior is
    shrinkage toward the prior, its strength learned; several routers are a stack. The weights
    are pulled toward ``w0`` (trust the first component as it is) by an L2 term of ``l2`` per row,
    so a handful of validation rows cannot swing them far. Components that read the task get the
    global prior where a query's task is unknown."""

    def __init__(self, kind: str, components: list[Router], per_target: bool = False, l2: float = 10.0):
        self.kind, self.components, self.per_target, self.l2 = kind, list(components), per_target, l2
        self.needs = tuple(sorted({n for c in self.components for n in c.needs if n != "tasks"}))

    def component_logits(self, x: RouterInputs) -> np.ndarray:
        """(n, K, J) each component's logits."""
        return np.stack([logit(predict_any(c, x)) for c in self.components], axis=2)

    def fit(self, z: np.ndarray, scores: np.ndarray, costs: np.ndarray | None = None, steps: int = 200,
            groups: np.ndarray | None = None) -> "BlendRouter":
        """``z`` (n, K, J) the components' logits on validation rows, ``scores`` (n, K) their outcomes
        (``costs`` and ``groups`` unused: the fit is by BCE, a loss of each row alone)."""
        import torch

        from .model import masked_bce, split_targets

        n, K, J = z.shape
        y, m = map(torch.from_numpy, split_targets(scores))
        zt = torch.from_numpy(z.astype(np.float32))
        w0 = torch.zeros(J)
        w0[0] = 1.0
        w = torch.nn.Parameter(w0.repeat(K, 1) if self.per_target else w0.clone())
        b = torch.nn.Parameter(torch.zeros(K))
        opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")
        lam = self.l2 / max(float(m.sum()) / K, 1.0)  # masked_bce is a mean: l2 rows' worth of evidence

        def closure():
            opt.zero_grad()
            loss = masked_bce((zt * w).sum(-1) + b, y, m) + lam * (((w - w0) ** 2).sum() + (b ** 2).sum())
            loss.backward()
            return loss

        opt.step(closure)
        self.w_ = w.detach().double().numpy().reshape(K if self.per_target else 1, J) * np.ones((K, 1))
        self.b_ = b.detach().double().numpy()
        self.fit_info_ = {"weights": self.w_.mean(axis=0).tolist(), "val_rows": int(n)}
        return self

    def predict_proba(self, x: RouterInputs) -> np.ndarray:
        return self.proba_of(self.component_logits(x))

    def proba_of(self, z: np.ndarray) -> np.ndarray:
        """Probabilities from the components' (n, K, J) logits."""
        return _sigmoid((z * self.w_[None]).sum(-1) + self.b_)

    @property
    def columns(self) -> list[str]:
        return sorted({c for r in self.components for c in prefill_columns(r)})

    def state(self):
        tensors, metas = {"w": self.w_, "b": self.b_}, []
        for j, c in enumerate(self.components):
            t, meta = nest(f"c{j}", c)
            tensors.update(t)
            metas.append(meta)
        return tensors, {"components": metas, "per_target": self.per_target, "l2": self.l2, "columns": self.columns}

    @classmethod
    def from_state(cls, tensors, meta):
        comps = [unnest(f"c{j}", tensors, m, meta["targets"]) for j, m in enumerate(meta["components"])]
        r = cls(meta["router"], comps, meta["per_target"], meta["l2"])
        r.w_, r.b_ = np.asarray(tensors["w"], np.float64), np.asarray(tensors["b"], np.float64)
        return r


class MixRouter(BlendRouter):
    """Shrinkage toward the prior in probability space: ``p = a * p_router + (1 - a) * p_prior``, one
    ``a`` for every target, chosen on validation rows among ``grid`` by the P-AUCCC it routes with
    (ties: the larger ``a``). ``a = 0`` is the prior itself, so on those rows it routes at least as
    well as the prior; one number fitted keeps the choice steady on a few hundred rows. With
    ``groups`` (out-of-fold rows: the refit that predicted each row) the P-AUCCC is the mean over
    groups, each scored alone, as selection.cv_scores scores them."""

    GRID = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))

    def __init__(self, kind: str, components: list[Router], per_target: bool = False, l2: float = 0.0):
        super().__init__(kind, components, False, 0.0)

    def fit(self, z: np.ndarray, scores: np.ndarray, costs: np.ndarray | None = None, steps: int = 0,
            groups: np.ndarray | None = None) -> "MixRouter":
        from . import metrics as M

        if costs is None:
            raise ValueError("MixRouter.fit needs the rows' costs")
        p = _sigmoid(z)
        rows = ~np.isnan(scores).any(axis=1)
        parts = [rows] if groups is None else [rows & (groups == g) for g in np.unique(groups[rows])]

        def area(a: float) -> float:
            return float(np.mean([M.p_auccc(a * p[r, :, 0] + (1 - a) * p[r, :, 1], scores[r], costs[r]) for r in parts]))

        areas = {a: area(a) for a in self.GRID}
        a = max(self.GRID, key=lambda g: (round(areas[g], 12), g))
        self.w_, self.b_ = np.array([[a, 1 - a]]) * np.ones((z.shape[1], 1)), np.zeros(z.shape[1])
        self.fit_info_ = {"a": float(a), "val_p_auccc_by_a": {str(g): v for g, v in areas.items()}, "val_rows": int(rows.sum())}
        return self

    def proba_of(self, z: np.ndarray) -> np.ndarray:
        return (_sigmoid(z) * self.w_[None]).sum(-1)


class MixMean(MixRouter):
    """The mean of several mixes toward the prior: components ``[r_1, ..., r_J, prior]``, each
    ``r_j`` mixed with the prior by its own weight ``a_j`` (chosen as ``MixRouter`` chooses it), then
    averaged: ``p = sum_j (a_j / J) p_j + (1 - mean(a)) p_prior``, itself a mix in probability space.

    Why: a few hundred validation rows cannot tell near-equal mixes apart, and picking one of them by
    its validation score picks noise (docs/study.md, 2026-12-04: the served mix was the weakest on
    test in half the runs); their mean hedges the choice. Like every mix, all ``a_j`` = 0 is the prior."""

    def fit(self, z: np.ndarray, scores: np.ndarray, costs: np.ndarray | None = None, steps: int = 0,
            groups: np.ndarray | None = None) -> "MixMean":
        J = z.shape[2] - 1
        a, info = np.zeros(J), []
        for j in range(J):
            m = MixRouter(self.kind, [self.components[j], self.components[-1]]).fit(z[:, :, [j, J]], scores, costs,
                                                                                    groups=groups)
            a[j] = m.w_[0, 0]
            info.append(m.fit_info_)
        w = np.r_[a / J, 1 - a.mean()]
        self.w_, self.b_ = w[None, :] * np.ones((z.shape[1], 1)), np.zeros(z.shape[1])
        self.fit_info_ = {"a": a.tolist(), "weights": w.tolist(), "val_rows": info[0]["val_rows"]}
        return self


# -- targets added later (``onboard``) ---------------------------------------------------------
@dataclass
class Head:
    """One added target's column, from what is known without retraining the pool
    (router_core.onboard fits it): ``prior``, the mean of its labels in the query's task (``table``
    per task in ``tasks``; ``fallback`` elsewhere); ``similar``, a logistic regression on the
    standardised logits of the base router's probabilities for the other targets."""

    kind: str  # "prior" | "similar"
    tasks: list[str] = field(default_factory=list)
    table: np.ndarray = field(default_factory=lambda: np.zeros(0))  # prior: (T,)
    fallback: float = 0.5  # prior: the overall mean
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))  # similar: (K,) of the logits
    scale: np.ndarray = field(default_factory=lambda: np.ones(0))
    w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    b: float = 0.0

    def predict(self, base: np.ndarray, tasks: list[str | None] | None) -> np.ndarray:
        """(n,) P(correct) of the added target, from the base router's (n, K) probabilities."""
        n = len(base)
        if self.kind == "prior":
            if tasks is None:
                return np.full(n, self.fallback)
            at = {t: i for i, t in enumerate(self.tasks)}
            return np.array([self.table[at[t]] if t in at else self.fallback for t in tasks], np.float64)
        if base.shape[1] != len(self.w):
            raise ArtifactError(f"a similar head reads {len(self.w)} targets' probabilities, given {base.shape[1]}")
        return _sigmoid(((logit(base) - self.mean) / self.scale) @ self.w + self.b)

    def state(self, prefix: str) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {"table": self.table, "mean": self.mean, "scale": self.scale, "w": self.w}
        return ({f"{prefix}.{k}": np.asarray(v, np.float64) for k, v in arrays.items()},
                {"kind": self.kind, "tasks": self.tasks, "fallback": self.fallback, "b": self.b})

    @classmethod
    def from_state(cls, prefix: str, tensors: dict[str, np.ndarray], meta: dict) -> "Head":
        arr = {k: np.asarray(tensors[f"{prefix}.{k}"], np.float64) for k in ("table", "mean", "scale", "w")}
        return cls(meta["kind"], list(meta["tasks"]), fallback=float(meta["fallback"]), b=float(meta["b"]), **arr)


class Onboarded(Router):
    """A router with targets added by ``onboard``: the base router's probabilities for its own
    targets, untouched (its state is nested as it was saved), then one column per added target from
    its ``Head``. Inputs given for the whole pool (a prior input, observed scores) reach the base
    cut to its targets, which come first."""

    kind = "onboarded"

    def __init__(self, base: Router, base_targets: list[str], heads: list[Head]):
        self.base, self.base_targets, self.heads = base, list(base_targets), list(heads)
        self.needs = tuple(sorted(set(base.needs) | ({"tasks"} if any(h.kind == "prior" for h in heads) else set())))

    def predict_proba(self, x: RouterInputs) -> np.ndarray:
        k = len(self.base_targets)
        cut = RouterInputs(n=x.n, prefill=x.prefill, semantic=x.semantic, tasks=x.tasks,
                           scores=None if x.scores is None else x.scores[:, :k],
                           prior=None if x.prior is None else x.prior[:, :k])
        p = predict_any(self.base, cut)
        return np.column_stack([p] + [h.predict(p, x.tasks) for h in self.heads])

    def state(self):
        tensors, base = nest("base", self.base)
        metas = []
        for j, h in enumerate(self.heads):
            t, m = h.state(f"head{j}")
            tensors.update(t)
            metas.append(m)
        return tensors, {"base": base, "base_targets": self.base_targets, "heads": metas,
                         "columns": prefill_columns(self.base)}

    @classmethod
    def from_state(cls, tensors, meta):
        base = unnest("base", tensors, meta["base"], meta["base_targets"])
        return cls(base, meta["base_targets"], [Head.from_state(f"head{j}", tensors, m) for j, m in enumerate(meta["heads"])])


def predict_any(router: Router, x: RouterInputs) -> np.ndarray:
    """A router's probabilities; the task prior falls back to the global mean without tasks."""
    if isinstance(router, TaskPrior):
        return router.prior(x.tasks, x.n)
    return router.predict_proba(x)


def prefill_columns(router: Router) -> list[str]:
    """The prefill feature columns a router reads (none for routers on other inputs)."""
    if isinstance(router, TrunkRouter):
        return [c for c in router.columns if c not in TrunkRouter.EXTRA]
    if isinstance(router, PrefillLogReg):
        return sorted(set(router.columns_))
    if isinstance(router, BlendRouter):
        return router.columns
    if isinstance(router, Onboarded):
        return prefill_columns(router.base)
    return []


def uses_tasks(router: Router) -> bool:
    """Whether a router reads the task column when it is given (it works without it)."""
    if isinstance(router, TaskPrior):
        return True
    if isinstance(router, TrunkRouter):
        return router.offset is not None or "task_prior" in router.columns
    if isinstance(router, BlendRouter):
        return any(uses_tasks(c) for c in router.components)
    if isinstance(router, Onboarded):
        return uses_tasks(router.base) or any(h.kind == "prior" and h.tasks for h in router.heads)
    return False


ROUTERS: dict[str, type[Router]] = {
    "prefill_trunk": TrunkRouter, "prefill_trunk_distilled": TrunkRouter, "prefill_logreg": PrefillLogReg,
    "semantic_mlp": TrunkRouter, "semantic_knn": SemanticKNN, "task_prior": TaskPrior, "best_single": ConstantRouter,
    "cheapest": ConstantRouter, "most_expensive": ConstantRouter, "random": RandomRouter, "oracle": OracleRouter,
    "prefill_trunk_residual": TrunkRouter, "prefill_trunk_platt": BlendRouter, "prefill_trunk_shrunk": BlendRouter,
    "prefill_logreg_shrunk": BlendRouter, "prefill_residual_shrunk": BlendRouter, "prefill_stack": BlendRouter,
    "prefill_trunk_mix": MixRouter, "prefill_residual_mix": MixRouter, "prefill_logreg_mix": MixRouter,
    "prefill_mix_mean": MixMean, "onboarded": Onboarded,
}
ORDER = list(ROUTERS)  # how reports list them; others after, by name


def ordered(names) -> list[str]:
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def save_router(storage, folder: str, router: Router, manifest: dict) -> dict:
    from .artifacts import save_component

    tensors, meta = router.state()
    return save_component(storage, folder, tensors, dict(manifest, **meta, router=router.kind, needs=list(router.needs),
                                                         uses_tasks=uses_tasks(router)))


def load_router(storage, folder: str) -> tuple[Router, dict]:
    from .artifacts import load_component

    tensors, manifest = load_component(storage, folder)
    kind = manifest.get("router")
    if kind not in ROUTERS:
        raise ArtifactError(f"{folder}: unknown router kind {kind!r}")
    return ROUTERS[kind].from_state(tensors, manifest), manifest
