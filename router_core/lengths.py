"""Each call's output length, estimated before the call is made: the output side of a cost estimate.

A call costs input tokens x input price + output tokens x output price. When a query is routed its
input is known and its output is not. ``OutputLengths`` estimates the output per target from the
training calls, per task where the queries carry one:

- ``expected`` (n, K): the mean output tokens of the query's (task, target) calls, or of the
  target's calls where its task has fewer than ``min_calls`` of them or is unknown. A tally sums
  costs, and the mean is what keeps a sum right. A median of a right-skewed length undercounts it:
  on the demo's RouterBench routes the median gave an estimated saving of 2.8% where 13.9% was
  observed; the task means gave 13.7%.
- ``typical`` (n, K): the median, chosen the same way. It is the point estimate whose absolute log
  error ``length_errors`` reports, against the target's median alone (the estimate before this one).

Output tokens come from the outcomes' ``output_tokens``. Where that is null but the call's observed
``cost_usd`` is known and the target has an output price (RouterBench), they are derived:
(cost - input tokens x input price) / output price, clipped at 0 (``derive_output_tokens``), with
input tokens counted as the estimate counts them (about 4 characters each). Where neither is known,
the model is empty: every call is estimated at 0 output tokens, and it says so (kind "median").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .artifacts import load_component, save_component
from .dataset import Dataset, outcome_matrix
from .evaluation import estimated_costs
from .importers import CHARS_PER_TOKEN
from .schemas import Pool
from .storage import join

MIN_CALLS = 20  # a (task, target) mean on fewer training calls falls back to the target's
MAP_MARGIN = 0.95  # the length map serves where its validation error is at least 5% below the means'


def derive_output_tokens(tokens: np.ndarray, cost: np.ndarray, chars: np.ndarray, price_in: np.ndarray,
                         price_out: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """(n, K) output tokens: ``tokens`` where known, else derived from the observed ``cost`` (n, K),
    the prompt's ``chars`` (n,) and the prices in dollars per million tokens (K,); NaN where neither
    is known. And the counts: known, derived, unknown (over every cell)."""
    tokens, cost = np.asarray(tokens, np.float64), np.asarray(cost, np.float64)
    p_in = np.asarray(price_in, np.float64)[None, :] / 1e6
    p_out = np.asarray(price_out, np.float64)[None, :] / 1e6
    input_cost = (np.asarray(chars, np.float64) / CHARS_PER_TOKEN)[:, None] * p_in
    with np.errstate(divide="ignore", invalid="ignore"):
        derived = np.where(p_out > 0, np.maximum(cost - input_cost, 0.0) / p_out, np.nan)
    known = np.isfinite(tokens)
    out = np.where(known, tokens, derived)
    got = np.isfinite(out)
    return out, {"known": int(known.sum()), "derived": int((got & ~known).sum()), "unknown": int((~got).sum())}


def dataset_output_tokens(ds: Dataset, qids: list[str], targets: list[str], rows: np.ndarray | None = None
                          ) -> tuple[np.ndarray, dict[str, int]]:
    """``derive_output_tokens`` of the dataset's calls to ``targets`` (``qids`` in the queries' order),
    on ``rows`` (a boolean mask; all by default)."""
    rows = np.ones(len(qids), bool) if rows is None else np.asarray(rows, bool)
    prices = {m.name: m for m in ds.pool.models}
    chars = np.array([len(t) for t in ds.queries.column("text").to_pylist()], np.float64)
    return derive_output_tokens(outcome_matrix(ds.outcomes, qids, targets, "output_tokens")[rows],
                                outcome_matrix(ds.outcomes, qids, targets, "cost_usd")[rows], chars[rows],
                                np.array([prices[t].price_in_per_mtok for t in targets]),
                                np.array([prices[t].price_out_per_mtok for t in targets]))


@dataclass
class OutputLengths:
    """Per target (and per task where known), the output tokens of a call: see the module's text."""

    targets: list[str]
    mean: np.ndarray  # (K,) over every training call of the target; 0 where none is known
    median: np.ndarray  # (K,)
    calls: np.ndarray  # (K,) training calls with a known or derived length
    per_task: dict[str, dict[str, list]] = field(default_factory=dict)  # task -> {"mean", "median", "calls"}: (K,) each
    source: dict[str, int] = field(default_factory=dict)  # derive_output_tokens' counts, on the training calls
    min_calls: int = MIN_CALLS
    # A LinearLengths beside the means: {"folder", "columns", "use": {"tasks": bool, "no_tasks": bool},
    # "validation_mae": {...}}; "use" says for which queries it beat the means on validation.
    prefill: dict = field(default_factory=dict)

    def uses_prefill(self, has_tasks: bool) -> bool:
        """Whether queries with (or without) tasks take their lengths from the LinearLengths."""
        return bool(self.prefill) and bool(self.prefill["use"]["tasks" if has_tasks else "no_tasks"])

    @property
    def kind(self) -> str:
        if not self.calls.any():
            return "median"
        return "task_mean" if self.per_task else "mean"

    def describe(self) -> str:
        """One line for a tally: which estimate of output length priced the calls."""
        if self.kind == "median":
            return "median output tokens per target" + ("" if self.median.any() else
                                                          " (none known on the training calls: 0 tokens)")
        how = "derived from cost_usd and prices" if self.source.get("derived") else "observed"
        if self.source.get("derived") and self.source.get("known"):
            how = "observed, else derived from cost_usd and prices"
        by = f"per task and target ({len(self.per_task)} tasks), else per target" if self.per_task else "per target"
        line = f"mean output tokens {by}, over {int(self.calls.sum())} training calls ({how})"
        if self.prefill:
            use = self.prefill["use"]
            which = " and ".join(w for w, on in (("with", use["tasks"]), ("without", use["no_tasks"])) if on)
            line += (f"; queries {which} a task: a ridge on prefill features" if which else
                     "; a ridge on prefill features did no better on validation")
        return line

    def _pick(self, what: str, tasks: list | None, n: int) -> np.ndarray:
        base = getattr(self, what)
        out = np.repeat(base[None, :], n, axis=0)
        if not self.per_task or tasks is None:
            return out
        for task, entry in self.per_task.items():
            rows = np.array([t == task for t in tasks], bool)
            if rows.any():
                enough = np.asarray(entry["calls"]) >= self.min_calls
                out[np.ix_(rows, enough)] = np.asarray(entry[what], np.float64)[enough][None, :]
        return out

    def expected(self, tasks: list | None, n: int) -> np.ndarray:
        """(n, K) mean output tokens of each query's calls (its task's where known): a cost estimate's."""
        return self._pick("mean", tasks, n)

    def typical(self, tasks: list | None, n: int) -> np.ndarray:
        """(n, K) median output tokens, chosen the same way: a point estimate of one call's length."""
        return self._pick("median", tasks, n)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "targets": self.targets, "mean": self.mean.tolist(), "median": self.median.tolist(),
                "calls": self.calls.astype(int).tolist(), "per_task": self.per_task, "source": self.source,
                "min_calls": self.min_calls, **({"prefill": self.prefill} if self.prefill else {})}

    @classmethod
    def from_dict(cls, d: dict) -> OutputLengths:
        return cls(list(d["targets"]), np.asarray(d["mean"], np.float64), np.asarray(d["median"], np.float64),
                   np.asarray(d["calls"], np.int64), dict(d.get("per_task") or {}), dict(d.get("source") or {}),
                   int(d.get("min_calls", MIN_CALLS)), dict(d.get("prefill") or {}))

    @classmethod
    def of_index(cls, index) -> OutputLengths:
        """A model index's length model; a model saved before it had one: its per-target medians."""
        if index.output_lengths:
            return cls.from_dict(index.output_lengths)
        med = np.array([float(index.output_tokens_median.get(t, 0.0)) for t in index.targets])
        return cls(list(index.targets), med, med, np.zeros(len(med), np.int64))


def _stats(col: np.ndarray) -> tuple[float, float, int]:
    got = col[np.isfinite(col)]
    return (float(got.mean()), float(np.median(got)), int(got.size)) if got.size else (0.0, 0.0, 0)


def fit_output_lengths(tokens: np.ndarray, tasks: list | None, targets: list[str], source: dict | None = None,
                       min_calls: int = MIN_CALLS) -> OutputLengths:
    """The length model of training calls' output ``tokens`` (n, K; NaN = unknown) and their
    queries' ``tasks`` (None, or None entries, where unknown)."""
    tokens = np.asarray(tokens, np.float64)
    mean, median, calls = (np.array(v) for v in zip(*[_stats(tokens[:, k]) for k in range(tokens.shape[1])]))
    per_task = {}
    for task in sorted({t for t in tasks or [] if t is not None}):
        rows = np.array([t == task for t in tasks], bool)
        m, md, c = zip(*[_stats(tokens[rows, k]) for k in range(tokens.shape[1])])
        if max(c) > 0:
            per_task[task] = {"mean": list(m), "median": list(md), "calls": list(c)}
    return OutputLengths(list(targets), mean.astype(np.float64), median.astype(np.float64), calls.astype(np.int64),
                         per_task, dict(source or {}), min_calls)


def length_errors(model: OutputLengths, tokens: np.ndarray, tasks: list | None,
                  prefill_tokens: np.ndarray | None = None) -> dict[str, dict]:
    """Per target, on calls of known (or derived) length ``tokens`` (n, K): the mean absolute log
    error (log1p tokens) of the model's ``typical`` estimate and of the target's median alone, the
    mean absolute error in tokens of both and of the means (``mae_mean``), and the mean tokens
    observed and expected (by the estimate route prices with: ``prefill_tokens``, the length map's,
    where the model uses it for such queries, else the means); with ``prefill_tokens``, their
    errors too (``*_prefill``)."""
    n = len(tokens)
    typical, means = model.typical(tasks, n), model.expected(tasks, n)
    expected = expected_tokens(model, tasks, n, prefill_tokens)
    out = {}
    for k, target in enumerate(model.targets):
        got = np.isfinite(tokens[:, k])
        if not got.any():
            continue
        y = tokens[got, k]
        out[target] = {
            "calls": int(got.sum()),
            "male_model": float(np.abs(np.log1p(typical[got, k]) - np.log1p(y)).mean()),
            "male_median": float(np.abs(np.log1p(model.median[k]) - np.log1p(y)).mean()),
            "mae_model": float(np.abs(typical[got, k] - y).mean()),
            "mae_median": float(np.abs(model.median[k] - y).mean()),
            "mae_mean": float(np.abs(means[got, k] - y).mean()),  # the means (per task where known)
            "mean_observed": float(y.mean()),
            "mean_expected": float(expected[got, k].mean()),
        }
        if prefill_tokens is not None:
            out[target]["male_prefill"] = float(np.abs(np.log1p(prefill_tokens[got, k]) - np.log1p(y)).mean())
            out[target]["mae_prefill"] = float(np.abs(prefill_tokens[got, k] - y).mean())
    return out


def index_costs(index, chars: np.ndarray, tasks: list | None, prefill_tokens: np.ndarray | None = None
                ) -> tuple[np.ndarray, OutputLengths, str]:
    """(n, K) estimated dollars of each query's call to each of a model index's targets: input tokens
    (``chars`` / about 4 each) x input price + the expected output tokens x output price; the length
    model that estimated them; and what priced these queries' output (``priced_by``). The output
    tokens are ``prefill_tokens`` (the model's LinearLengths on the queries' features) where the
    model chose them for queries with or without tasks as these are, else the means (``expected``)."""
    lengths = OutputLengths.of_index(index)
    tokens = expected_tokens(lengths, tasks, len(chars), prefill_tokens)
    return (estimated_costs(chars, Pool.model_validate(index.pool), list(index.targets), tokens), lengths,
            priced_by(lengths, tasks, prefill_tokens))


def priced_by(lengths: OutputLengths, tasks: list | None, prefill_tokens: np.ndarray | None) -> str:
    """Which estimate gave these queries' output tokens (``expected_tokens``' choice), in a few words."""
    has = _has_tasks(tasks)
    if prefill_tokens is not None and lengths.uses_prefill(has):
        return "the length map on prefill features"
    if lengths.kind == "median":
        return "each target's median"
    return "each task's mean per target" if has and lengths.per_task else "each target's mean"


def expected_tokens(lengths: OutputLengths, tasks: list | None, n: int, prefill_tokens: np.ndarray | None = None
                    ) -> np.ndarray:
    """(n, K) the output tokens calls are priced with: ``prefill_tokens`` (the length map's) where the
    model uses its map for queries like these, else the means (per task where they carry one)."""
    has = _has_tasks(tasks)
    if prefill_tokens is not None and lengths.uses_prefill(has):
        return prefill_tokens
    return lengths.expected(tasks if has else None, n)


@dataclass
class LinearLengths:
    """Output tokens as a linear map of a query's prefill columns: max(0, x @ weight + bias), x the
    columns' vectors side by side. A ridge per target (alpha by leave-one-out) on the standardised
    features reduced by PCA, folded into one map; fitted on tokens, not their logarithm, because a
    cost estimate sums them (docs/study.md, 2026-12-07 (2))."""

    columns: list[str]
    weight: np.ndarray  # (d, K)
    bias: np.ndarray  # (K,)

    def predict(self, prefill: dict[str, np.ndarray]) -> np.ndarray:
        x = np.concatenate([np.asarray(prefill[c], np.float32) for c in self.columns], axis=1)
        return np.maximum(x @ self.weight.astype(np.float32) + self.bias.astype(np.float32), 0.0).astype(np.float64)

    def save(self, storage, folder: str, manifest: dict) -> dict:
        return save_component(storage, folder, {"weight": self.weight.astype(np.float32),
                                                "bias": self.bias.astype(np.float32)},
                              dict(manifest, kind="prefill-router-output-lengths", columns=self.columns))

    @classmethod
    def load(cls, storage, folder: str) -> LinearLengths:
        tensors, manifest = load_component(storage, folder)
        return cls(list(manifest["columns"]), tensors["weight"], tensors["bias"])


def fit_linear_lengths(prefill: dict[str, np.ndarray], columns: list[str], tokens: np.ndarray, pca_dim: int = 128,
                       alphas: np.ndarray = np.logspace(-2, 5, 15)) -> LinearLengths:
    """A ridge per target of ``tokens`` (n, K; NaN = unknown) on ``columns`` of ``prefill`` (n rows
    each), on standardised features reduced to ``pca_dim`` dimensions (fitted on these rows)."""
    from sklearn.linear_model import RidgeCV

    x = np.concatenate([np.asarray(prefill[c], np.float64) for c in columns], axis=1)
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mu) / sd
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    v = vt[: min(pca_dim, vt.shape[0])].T  # (d, p)
    zp = z @ v
    weight, bias = np.zeros((x.shape[1], tokens.shape[1])), np.zeros(tokens.shape[1])
    for k in range(tokens.shape[1]):
        ok = np.isfinite(tokens[:, k])
        if ok.sum() < 10:  # too few lengths to fit: the target's mean
            bias[k] = float(tokens[ok, k].mean()) if ok.any() else 0.0
            continue
        r = RidgeCV(alphas=alphas).fit(zp[ok], tokens[ok, k])
        w = v @ r.coef_ / sd  # back to the raw features
        weight[:, k], bias[k] = w, float(r.intercept_ - mu @ w)
    return LinearLengths(list(columns), weight, bias)


def mean_abs_error(pred: np.ndarray, tokens: np.ndarray) -> float:
    """Mean over targets of the mean absolute error in tokens, on calls of known length; NaN if none."""
    errs = [np.abs(pred[np.isfinite(tokens[:, k]), k] - tokens[np.isfinite(tokens[:, k]), k]).mean()
            for k in range(tokens.shape[1]) if np.isfinite(tokens[:, k]).any()]
    return float(np.mean(errs)) if errs else float("nan")


def with_linear(means: OutputLengths, prefill: dict[str, np.ndarray], columns: list[str], tokens: np.ndarray,
                tasks: list | None, train: np.ndarray, val: np.ndarray, folder: str
                ) -> tuple[OutputLengths, LinearLengths | None]:
    """``means`` with a LinearLengths on ``columns`` fitted on the ``train`` rows and judged on the
    ``val`` rows (boolean masks over the rows of ``prefill``, ``tokens`` and ``tasks``) by mean
    absolute error: it serves queries with tasks where it beats the task means by ``MAP_MARGIN``, and
    queries without where it beats the targets' means so (a tie keeps the means: they need no features). Unchanged, and None, where there are no columns or no lengths
    on either side."""
    got_tr, got_va = np.isfinite(tokens[train]).any(), np.isfinite(tokens[val]).any()
    if not columns or not got_tr or not got_va:
        return means, None
    linear = fit_linear_lengths({c: prefill[c][train] for c in columns}, columns, tokens[train])
    n_va, tok_va = int(val.sum()), tokens[val]
    task_va = [tasks[i] for i in np.flatnonzero(val)] if tasks is not None else None
    mae = {"prefill": mean_abs_error(linear.predict({c: prefill[c][val] for c in columns}), tok_va),
           "mean": mean_abs_error(means.expected(None, n_va), tok_va)}
    if task_va is not None:
        mae["task_mean"] = mean_abs_error(means.expected(task_va, n_va), tok_va)
    use = {"tasks": task_va is not None and mae["prefill"] < MAP_MARGIN * mae["task_mean"],
           "no_tasks": mae["prefill"] < MAP_MARGIN * mae["mean"]}
    info = {"folder": folder, "columns": list(columns), "use": use, "validation_mae": mae,
            "validation_calls": int(np.isfinite(tok_va).sum())}
    return OutputLengths(means.targets, means.mean, means.median, means.calls, means.per_task, means.source,
                         means.min_calls, info), linear


def length_map(storage, model: str, index, tasks: list | None) -> LinearLengths | None:
    """The model's LinearLengths where its choice serves queries like these (with tasks or without),
    else None."""
    lengths = OutputLengths.of_index(index)
    if not lengths.uses_prefill(_has_tasks(tasks)):
        return None
    return LinearLengths.load(storage, join(model, lengths.prefill["folder"]))


def _has_tasks(tasks: list | None) -> bool:
    """A batch of queries carries tasks where any of them has one (the others take their target's mean)."""
    return tasks is not None and any(t is not None for t in tasks)
