"""SharedTrunkNet: one network that predicts P(correct) for every target model at once.

standardise -> (optional PCA) -> Linear(d, w1) -> ReLU -> Dropout -> Linear(w1, w2) -> ReLU ->
Dropout -> Linear(w2, K). Trained with binary cross-entropy masked where a target has no outcome
for a query (never read as 0); graded scores in [0, 1] are soft targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


class Preprocessor:
    """Standardisation and optional PCA, fitted on training rows; arrays only (safetensors-ready)."""

    def __init__(self, pca_dim: int | None = None, eps: float = 1e-6):
        self.pca_dim = pca_dim
        self.eps = eps

    def fit(self, x: np.ndarray) -> "Preprocessor":
        x = np.asarray(x, np.float64)
        self.mean_ = x.mean(axis=0)
        self.scale_ = x.std(axis=0) + self.eps
        z = (x - self.mean_) / self.scale_
        if self.pca_dim:
            k = min(self.pca_dim, z.shape[0] - 1, z.shape[1])
            _, _, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
            self.components_ = vt[:k].T  # (d, k)
        else:
            self.components_ = None
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Standardise (and project) in float32: the fitted statistics stay float64 on disk."""
        z = (np.asarray(x, np.float32) - self.mean_.astype(np.float32)) / self.scale_.astype(np.float32)
        if self.components_ is not None:
            z = z @ self.components_.astype(np.float32)
        return z.astype(np.float32, copy=False)

    @property
    def out_dim(self) -> int:
        return len(self.mean_) if self.components_ is None else self.components_.shape[1]

    def state(self) -> dict[str, np.ndarray]:
        s = {"mean": self.mean_, "scale": self.scale_}
        if self.components_ is not None:
            s["components"] = self.components_
        return s

    @classmethod
    def from_state(cls, s: dict[str, np.ndarray]) -> "Preprocessor":
        p = cls(pca_dim=s["components"].shape[1] if "components" in s else None)
        p.mean_, p.scale_ = np.asarray(s["mean"]), np.asarray(s["scale"])
        p.components_ = np.asarray(s["components"]) if "components" in s else None
        return p


class SharedTrunkNet(nn.Module):
    def __init__(self, d_in: int, n_targets: int, widths: tuple[int, ...] = (256, 128),
                 dropouts: tuple[float, ...] = (0.3, 0.2)):
        super().__init__()
        layers: list[nn.Module] = []
        prev = d_in
        for w, p in zip(widths, dropouts):
            layers += [nn.Linear(prev, w), nn.ReLU(), nn.Dropout(p)]
            prev = w
        layers.append(nn.Linear(prev, n_targets))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, d) -> (b, K) logits
        return self.net(x)


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean BCE over measured (query, target) pairs only.  All (b, K); mask 1 = measured."""
    loss = nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (loss * mask).sum() / mask.sum().clamp_min(1.0)


def pairwise_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The within-query order of the targets: for every pair (i, j) of one query's measured targets
    with score_i > score_j, softplus(-(z_i - z_j)) weighted by score_i - score_j; the mean over the
    pairs' weights. BCE learns each target's P(correct) apart, and a router ranks targets by small
    differences of large logits; this term scores those differences directly."""
    w = (targets[:, :, None] - targets[:, None, :]).clamp_min(0.0) * mask[:, :, None] * mask[:, None, :]
    d = logits[:, :, None] - logits[:, None, :]
    return (nn.functional.softplus(-d) * w).sum() / w.sum().clamp_min(1e-6)


def trunk_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, pairwise: float = 0.0) -> torch.Tensor:
    """masked_bce, plus ``pairwise`` x pairwise_loss when it is > 0."""
    loss = masked_bce(logits, targets, mask)
    return loss + pairwise * pairwise_loss(logits, targets, mask) if pairwise > 0 else loss


@dataclass
class TrainParams:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 512
    max_epochs: int = 200
    patience: int = 15
    widths: tuple[int, ...] = (256, 128)
    dropouts: tuple[float, ...] = (0.3, 0.2)
    pairwise: float = 0.0  # weight of pairwise_loss beside the BCE (0 = BCE alone)


def split_targets(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(targets with NaN -> 0, mask of measured) from an (n, K) score matrix with NaN = not measured."""
    mask = ~np.isnan(scores)
    return np.where(mask, scores, 0.0).astype(np.float32), mask.astype(np.float32)


def fit_trunk(x_tr: np.ndarray, s_tr: np.ndarray, x_va: np.ndarray, s_va: np.ndarray, params: TrainParams,
              seed: int, rank: int = 0, world: int = 1, wrap=None, o_tr: np.ndarray | None = None,
              o_va: np.ndarray | None = None) -> tuple[SharedTrunkNet, float, int]:
    """Train one net with early stopping on validation loss. Deterministic for a seed on CPU.

    Offsets ``o_tr``/``o_va`` (n, K), when given, are added to the net's logits (a residual net: it
    learns only the correction to a known logit, e.g. the task prior's); its last layer then starts
    at zero, so training starts from the offsets' own predictions.

    Data-parallel use: each of ``world`` workers passes its ``rank`` and a ``wrap`` (e.g. DDP) for
    the net; every worker sees the same permutation and trains on its slice of each batch, so all
    take the same number of steps. Returns the net at its best epoch, that validation loss, and
    the number of epochs run.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = SharedTrunkNet(x_tr.shape[1], s_tr.shape[1], params.widths, params.dropouts)
    if o_tr is not None:
        nn.init.zeros_(net.net[-1].weight)
        nn.init.zeros_(net.net[-1].bias)
    model = wrap(net) if wrap is not None else net
    opt = torch.optim.Adam(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    # Copies: arrays from Ray's object store are read-only.
    xt, (yt, mt) = torch.tensor(x_tr, dtype=torch.float32), map(torch.from_numpy, split_targets(s_tr))
    xv, (yv, mv) = torch.tensor(x_va, dtype=torch.float32), map(torch.from_numpy, split_targets(s_va))
    ot = torch.zeros(()) if o_tr is None else torch.tensor(o_tr, dtype=torch.float32)
    ov = torch.zeros(()) if o_va is None else torch.tensor(o_va, dtype=torch.float32)
    best, best_state, since, epoch = float("inf"), None, 0, 0
    for epoch in range(1, params.max_epochs + 1):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), params.batch_size):
            idx = perm[i : i + params.batch_size][rank::world]
            opt.zero_grad()
            trunk_loss(model(xt[idx]) + (ot[idx] if ot.ndim else ot), yt[idx], mt[idx], params.pairwise).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            val = float(trunk_loss(net(xv) + ov, yv, mv, params.pairwise))
        if val < best - 1e-6:
            best, since = val, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            since += 1
            if since >= params.patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return net, best, epoch


def predict_logits(nets: list[SharedTrunkNet], x: np.ndarray) -> np.ndarray:
    """Each member's logits.  (n, d) -> (members, n, K)."""
    with torch.no_grad():
        xt = torch.from_numpy(np.asarray(x, np.float32))
        return np.stack([n.eval()(xt).numpy() for n in nets])  # eval: no dropout


class FusedTrunk:
    """The serving form of a Preprocessor and its member nets, for large batches.

    Standardisation and PCA are one affine map; when it is cheaper, that map is folded into the
    members' first layers, and the members' first layers always run as one stacked matmul. Inputs
    may be float16 (as stored); the arithmetic is float32. Same logits as ``pre.transform`` +
    ``predict_logits`` up to float32 rounding (tests/unit/test_model.py).
    """

    def __init__(self, pre: Preprocessor, nets: list[SharedTrunkNet]):
        mean, scale = np.asarray(pre.mean_, np.float64), np.asarray(pre.scale_, np.float64)
        comp = pre.components_ if pre.components_ is not None else np.eye(len(mean))
        proj = comp / scale[:, None]  # (D, k): x @ proj - offset == transform(x)
        offset = (mean / scale) @ comp
        firsts = [n.net[0] for n in nets]
        self.width = firsts[0].out_features
        if any(f.out_features != self.width for f in firsts):
            raise ValueError("ensemble members of different widths")
        w = np.concatenate([f.weight.detach().double().numpy().T for f in firsts], axis=1)  # (k, M*w)
        b = np.concatenate([f.bias.detach().double().numpy() for f in firsts])
        d_in, k, mw = proj.shape[0], proj.shape[1], w.shape[1]
        self.folded = d_in * mw <= d_in * k + k * mw
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))  # noqa: E731
        if self.folded:
            self.maps = [(t(proj @ w), t(b - offset @ w))]
        else:
            self.maps = [(t(proj), t(-offset)), (t(w), t(b))]
        self.rests = [n.eval().net[1:] for n in nets]  # from the first activation on

    def logits(self, x: np.ndarray, chunk: int = 512) -> np.ndarray:
        """(n, D) -> (members, n, K), ``chunk`` rows at a time (a float16 chunk made float32 stays in
        cache: 1.8x faster than converting the whole batch first, and no float32 copy of it)."""
        x = torch.from_numpy(np.ascontiguousarray(x))
        out = torch.empty((len(self.rests), len(x), self.rests[0][-1].out_features))
        w = self.width
        with torch.no_grad():
            for i in range(0, len(x), chunk):
                h = x[i : i + chunk].float()
                for a, c in self.maps:
                    h = torch.addmm(c, h, a)
                for m, r in enumerate(self.rests):
                    out[m, i : i + chunk] = r(h[:, m * w : (m + 1) * w])
        return out.numpy()


def ensemble_proba(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Mean over members of sigmoid(logits / temperature).  (members, n, K) -> (n, K)."""
    return (1.0 / (1.0 + np.exp(-logits / temperature))).mean(axis=0)


def predict_proba(nets: list[SharedTrunkNet], x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The ensemble's probabilities.  (n, d) -> (n, K)."""
    return ensemble_proba(predict_logits(nets, x), temperature)


def fit_temperature(logits: np.ndarray, scores: np.ndarray, grid: np.ndarray | None = None) -> float:
    """The T minimising validation BCE of ``mean_members sigmoid(logits / T)`` (masked), on a log grid."""
    grid = np.exp(np.linspace(np.log(0.25), np.log(4.0), 97)) if grid is None else grid
    losses = [bce(ensemble_proba(logits, t), scores) for t in grid]
    return float(grid[int(np.argmin(losses))])


def logit(p: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [eps, 1 - eps] (a prior of exactly 0 or 1 stays finite)."""
    p = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def bce(proba: np.ndarray, scores: np.ndarray) -> float:
    """Masked mean binary cross-entropy of probabilities against (graded, NaN = unmeasured) scores."""
    y, m = split_targets(scores)
    p = torch.from_numpy(np.clip(np.asarray(proba, np.float64), 1e-7, 1 - 1e-7))
    logit = torch.log(p) - torch.log1p(-p)
    return float(masked_bce(logit.float(), torch.from_numpy(y), torch.from_numpy(m)))
