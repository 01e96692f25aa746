"""The rows the served router was chosen on, kept: every candidate's probabilities there, each row
predicted by a fit that did not see it, with the rows' scores, costs and parts.

``train`` writes them as MODEL/held_out.parquet (named by the model index, ``held_out``), so that any
choice rule, including those that average or stack probabilities and not only compare scores, can
be replayed offline in seconds, without a refit (tests/bench/replay_choice.py).

The Parquet is long: one row per (held-out row, candidate), with ``row`` (0..n-1), ``query_id``,
``part`` (the part the row was scored in: its cross-fit part out of fold, else its fold of the
first cross-validation repeat), ``candidate``, and one float64 column per target. Two reserved
candidates carry the rows' truth: ``@score`` (each target's score) and ``@cost`` (dollars per call).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from . import metrics as M
from .errors import ArtifactError

FILE = "held_out.parquet"
SCORE, COST = "@score", "@cost"
_FIXED = ("row", "query_id", "part", "candidate")


@dataclass
class HeldOut:
    kind: str  # "out-of-fold training" or "validation"
    proba: dict[str, np.ndarray]  # candidate -> (n, K)
    scores: np.ndarray  # (n, K)
    costs: np.ndarray  # (n, K)
    part: np.ndarray  # (n,) the part each row was scored in
    index: np.ndarray | None = None  # (n,) each row's position among the dataset's queries

    def per_part(self, name: str) -> np.ndarray:
        """Candidate ``name``'s P-AUCCC on each part, in part order."""
        return part_scores(self.proba[name], self.scores, self.costs, self.part)


def part_scores(proba: np.ndarray, scores: np.ndarray, costs: np.ndarray, part: np.ndarray) -> np.ndarray:
    """P-AUCCC of ``proba`` on each part of ``part`` (each row's part), in part order."""
    return np.array([M.p_auccc(proba[i], scores[i], costs[i])
                     for i in (np.flatnonzero(part == g) for g in np.unique(part))])


def to_table(h: HeldOut, query_ids: list[str], targets: list[str]) -> pa.Table:
    """``h`` as the long table described above; ``query_ids``: the n rows' ids."""
    n = len(h.scores)
    if len(query_ids) != n:
        raise ValueError(f"{len(query_ids)} query ids for {n} held-out rows")
    blocks = [(SCORE, h.scores), (COST, h.costs)] + sorted(h.proba.items())
    cols = {"row": pa.array(np.tile(np.arange(n, dtype=np.int32), len(blocks))),
            "query_id": pa.array(list(query_ids) * len(blocks), pa.string()),
            "part": pa.array(np.tile(np.asarray(h.part, np.int32), len(blocks))),
            "candidate": pa.array([name for name, _ in blocks for _ in range(n)], pa.string())}
    stacked = np.concatenate([np.asarray(v, np.float64) for _, v in blocks], axis=0)
    for k, t in enumerate(targets):
        cols[t] = pa.array(stacked[:, k], pa.float64())
    return pa.table(cols).replace_schema_metadata({"kind": h.kind})


def from_table(table: pa.Table, where: str = FILE) -> tuple[HeldOut, list[str], list[str]]:
    """(held-out rows, their query ids, the targets) of a table ``to_table`` wrote; ``where`` names it
    in errors."""
    names = table.column_names
    if names[: len(_FIXED)] != list(_FIXED):
        raise ArtifactError(f"{where}: columns {names[:len(_FIXED)]}, expected {list(_FIXED)} first")
    targets = names[len(_FIXED):]
    cand = np.asarray(table.column("candidate").to_pylist(), object)
    rows = np.asarray(table.column("row").to_numpy())
    values = np.stack([table.column(t).to_numpy(zero_copy_only=False) for t in targets], axis=1)
    blocks = {}
    for name in dict.fromkeys(cand):
        sel = np.flatnonzero(cand == name)
        blocks[name] = sel[np.argsort(rows[sel], kind="stable")]
    for need in (SCORE, COST):
        if need not in blocks:
            raise ArtifactError(f"{where}: no {need} rows")
    first = blocks[SCORE]
    n = len(first)
    if any(len(s) != n or not np.array_equal(rows[s], np.arange(n)) for s in blocks.values()):
        raise ArtifactError(f"{where}: each candidate must hold rows 0..{n - 1} once")
    meta = table.schema.metadata or {}
    h = HeldOut(kind=meta.get(b"kind", b"validation").decode(),
                proba={k: values[s] for k, s in blocks.items() if k not in (SCORE, COST)},
                scores=values[first], costs=values[blocks[COST]],
                part=np.asarray(table.column("part").to_numpy())[first])
    return h, [table.column("query_id")[int(i)].as_py() for i in first], targets
