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

from .dataset import Dataset, outcome_matrix
from .evaluation import estimated_costs
from .importers import CHARS_PER_TOKEN
from .schemas import Pool

MIN_CALLS = 20  # a (task, target) mean on fewer training calls falls back to the target's


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
        return f"mean output tokens {by}, over {int(self.calls.sum())} training calls ({how})"

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
                "min_calls": self.min_calls}

    @classmethod
    def from_dict(cls, d: dict) -> OutputLengths:
        return cls(list(d["targets"]), np.asarray(d["mean"], np.float64), np.asarray(d["median"], np.float64),
                   np.asarray(d["calls"], np.int64), dict(d.get("per_task") or {}), dict(d.get("source") or {}),
                   int(d.get("min_calls", MIN_CALLS)))

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


def length_errors(model: OutputLengths, tokens: np.ndarray, tasks: list | None) -> dict[str, dict]:
    """Per target, on calls of known (or derived) length ``tokens`` (n, K): the mean absolute log
    error (log1p tokens) of the model's ``typical`` estimate and of the target's median alone, the
    mean absolute error in tokens of both, and the mean tokens observed and expected."""
    n = len(tokens)
    typical, expected = model.typical(tasks, n), model.expected(tasks, n)
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
            "mean_observed": float(y.mean()),
            "mean_expected": float(expected[got, k].mean()),
        }
    return out


def index_costs(index, chars: np.ndarray, tasks: list | None) -> tuple[np.ndarray, OutputLengths]:
    """(n, K) estimated dollars of each query's call to each of a model index's targets: input tokens
    (``chars`` / about 4 each) x input price + the expected output tokens (per task where ``tasks``
    are known) x output price; and the length model that estimated them."""
    lengths = OutputLengths.of_index(index)
    return estimated_costs(chars, Pool.model_validate(index.pool), list(index.targets),
                           lengths.expected(tasks, len(chars))), lengths
