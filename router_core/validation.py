"""Row-level validation of a dataset: every bad row goes to the rejects table with a reason."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import schemas
from .dataset import OUTCOMES_FILE, QUERIES_FILE, Dataset


@dataclass
class ValidationResult:
    """The clean dataset, the rejected rows and the counts that reconcile them."""

    dataset: Dataset
    rejects: pa.Table
    counts: dict[str, int]
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rejects.num_rows == 0

    def reconciles(self) -> bool:
        c = self.counts
        return (
            c["queries_in"] == c["queries_ok"] + c["queries_rejected"]
            and c["outcomes_in"] == c["outcomes_ok"] + c["outcomes_rejected"]
        )


def _is_blank(s: str | None) -> bool:
    return s is None or not s.strip()


def _blank(col: pa.ChunkedArray) -> np.ndarray:
    """(n,) bool: null, empty, or only (Unicode) whitespace."""
    if col.num_chunks == 0 or len(col) == 0:
        return np.zeros(len(col), bool)
    b = pc.or_(pc.equal(pc.utf8_length(col), 0), pc.utf8_is_space(col))
    return b.fill_null(True).to_numpy(zero_copy_only=False)


def _bad_utf8(col: pa.ChunkedArray) -> np.ndarray:
    """(n,) bool: string values whose bytes are not valid UTF-8 (Parquet does not check on read)."""
    bad = np.zeros(len(col), bool)
    at = 0
    for chunk in col.chunks:
        try:
            chunk.validate(full=True)
        except pa.ArrowInvalid:
            for j, v in enumerate(chunk.view(pa.binary()).to_pylist()):
                if v is not None:
                    try:
                        v.decode("utf-8")
                    except UnicodeDecodeError:
                        bad[at + j] = True
        at += len(chunk)
    return bad


def safe_pylist(col: pa.ChunkedArray) -> list:
    """A string column as Python strings, invalid UTF-8 decoded with U+FFFD (for messages)."""
    if not _bad_utf8(col).any():
        return col.to_pylist()
    return [None if v is None else v.decode("utf-8", "replace") for v in col.cast(pa.binary()).to_pylist()]


def check_queries(q: pa.Table, source: str = QUERIES_FILE,
                  check_split: bool = True) -> tuple[list[int], list[dict], dict[str, str]]:
    """Row checks of a conformed queries table (the split too, unless ``check_split`` is off).

    Returns the indices of accepted rows, reject rows, and the ids whose row was refused for
    something other than the id itself (their outcomes are refused as "its query was rejected").
    """
    rejects: list[dict] = []
    id_blank, text_blank = _blank(q.column("query_id")), _blank(q.column("text"))
    split_bad = np.zeros(q.num_rows, bool)
    if check_split:
        sp = q.column("split")
        split_bad = pc.invert(pc.is_in(sp, value_set=pa.array(schemas.SPLITS))).fill_null(False).to_numpy(
            zero_copy_only=False)
    utf8_bad = {c: _bad_utf8(q.column(c)) for c in ("query_id", "text", "split", "task") if c in q.column_names}
    any_utf8_bad = np.logical_or.reduce(list(utf8_bad.values()))
    nul = pc.match_substring(q.column("text"), "\x00").fill_null(False).to_numpy(zero_copy_only=False) \
        if q.num_rows else np.zeros(0, bool)
    # Fast path, vectorised: nothing blank, no duplicate id, no bad split (the usual bulk batch).
    if not (id_blank.any() or text_blank.any() or split_bad.any() or any_utf8_bad.any() or nul.any()) and \
            pc.count_distinct(q.column("query_id")).as_py() == q.num_rows:
        return list(range(q.num_rows)), [], {}
    qids = safe_pylist(q.column("query_id"))
    texts = safe_pylist(q.column("text"))
    splits = safe_pylist(q.column("split"))
    first_row: dict[str, int] = {}
    keep_q = []
    rejected_qids: dict[str, str] = {}
    for i, (qid, text, split) in enumerate(zip(qids, texts, splits)):
        reason = column = None
        if utf8_bad["query_id"][i]:
            reason, column = "query_id is not valid UTF-8", "query_id"
        elif id_blank[i]:
            reason, column = "query_id is null or empty", "query_id"
        elif qid in first_row:
            reason, column = f"duplicate query_id (first at row {first_row[qid]})", "query_id"
        elif text is None:
            reason, column = "text is null", "text"
        elif utf8_bad["text"][i]:
            reason, column = "text is not valid UTF-8", "text"
        elif text_blank[i]:
            reason, column = "text is empty or whitespace only", "text"
        elif nul[i]:
            reason, column = "text contains U+0000 (NUL)", "text"
        elif any_utf8_bad[i]:
            column = next(c for c, b in utf8_bad.items() if b[i])
            reason = f"{column} is not valid UTF-8"
        elif check_split and split is not None and split not in schemas.SPLITS:
            reason, column = f"split {split!r} is not one of {', '.join(schemas.SPLITS)}", "split"
        if not id_blank[i] and not utf8_bad["query_id"][i] and qid not in first_row:
            first_row[qid] = i
        if reason is None:
            keep_q.append(i)
        else:
            if qid is not None and column != "query_id":  # the id itself is fine, its row is not
                rejected_qids.setdefault(qid, reason)
            rejects.append(dict(source=source, row=i, query_id=qid, column=column, reason=reason))
    return keep_q, rejects, rejected_qids


def validate(
    ds: Dataset, queries_source: str = QUERIES_FILE, outcomes_source: str = OUTCOMES_FILE
) -> ValidationResult:
    """Split ``ds`` into accepted rows and rejects. Tables must already be conformed."""
    q = ds.queries
    keep_q, rejects, rejected_qids = check_queries(q, queries_source)
    qids = safe_pylist(q.column("query_id"))
    accepted_qids = {qids[i] for i in keep_q}

    # -- outcomes ---------------------------------------------------------------------------
    o = ds.outcomes
    pool_names = set(ds.pool.names)
    seen_pair: dict[tuple[str, str], int] = {}
    keep_o = []
    cols = [safe_pylist(o.column(c)) if pa.types.is_string(o.column(c).type) else o.column(c).to_pylist()
            for c in ("query_id", "model", "score", "cost_usd", "output_tokens")]
    for i, (qid, model, score, cost, otok) in enumerate(zip(*cols)):
        reason = column = None
        if _is_blank(qid):
            reason, column = "query_id is null or empty", "query_id"
        elif qid not in accepted_qids:
            column = "query_id"
            reason = "its query was rejected" if qid in rejected_qids else "query_id not in queries"
        elif _is_blank(model):
            reason, column = "model is null or empty", "model"
        elif model not in pool_names:
            reason, column = "model not in pool.yaml", "model"
        elif score is None or math.isnan(score):
            reason, column = "score is null or NaN", "score"
        elif not 0.0 <= score <= 1.0:
            reason, column = f"score {score!r} outside [0, 1]", "score"
        elif cost is not None and (math.isnan(cost) or cost < 0 or math.isinf(cost)):
            reason, column = f"cost_usd {cost!r} is negative or not finite", "cost_usd"
        elif otok is not None and otok < 0:
            reason, column = f"output_tokens {otok} is negative", "output_tokens"
        elif (qid, model) in seen_pair:
            reason = f"duplicate outcome for this query and model (first at row {seen_pair[(qid, model)]})"
            column = "model"
        if reason is None:
            seen_pair[(qid, model)] = i
            keep_o.append(i)
        else:
            rejects.append(
                dict(source=outcomes_source, row=i, query_id=qid, model=model, column=column, reason=reason)
            )

    clean = Dataset(
        queries=q.take(pa.array(keep_q, pa.int64())),
        outcomes=o.take(pa.array(keep_o, pa.int64())),
        pool=ds.pool,
        warnings=list(ds.warnings),
    )
    warnings = list(ds.warnings)
    measured = set(clean.outcomes.column("model").to_pylist())
    unused = [m for m in ds.pool.names if m not in measured]
    if unused:
        warnings.append(f"pool.yaml: model(s) with no accepted outcome: {', '.join(unused)}")
    warnings += split_shift_warnings(clean.queries)
    counts = {
        "queries_in": q.num_rows,
        "queries_ok": len(keep_q),
        "queries_rejected": q.num_rows - len(keep_q),
        "outcomes_in": o.num_rows,
        "outcomes_ok": len(keep_o),
        "outcomes_rejected": o.num_rows - len(keep_o),
        "models": len(measured),
    }
    return ValidationResult(clean, schemas.rejects_table(rejects), counts, warnings)


def split_shift_warnings(q: pa.Table, ratio: float = 3.0, min_rows: int = 20) -> list[str]:
    """A task whose test prompts are of another kind than its training prompts (median length in
    characters ``ratio`` times apart either way, both sides with ``min_rows`` rows or more): the
    validation split, drawn from train, cannot measure the routes there. LLMRouter-9's MMLU is one:
    zero-shot test prompts (median 128 characters) against five-shot training ones (1,594), and
    the default route lost 12-34 points on them while validation saw a few (docs/study.md)."""
    if "task" not in q.column_names:
        return []
    lengths: dict[tuple[str, str], list[int]] = {}
    for t, sp, text in zip(q.column("task").to_pylist(), q.column("split").to_pylist(), q.column("text").to_pylist()):
        if t is not None and sp in ("train", "test"):
            lengths.setdefault((t, sp), []).append(len(text))
    out = []
    for t in sorted({t for t, _ in lengths}):
        tr, te = lengths.get((t, "train"), []), lengths.get((t, "test"), [])
        if len(tr) >= min_rows and len(te) >= min_rows:
            a, b = float(np.median(tr)), float(np.median(te))
            if max(a, b) >= ratio * max(min(a, b), 1.0):
                out.append(f"task {t!r}: its test prompts are unlike its training ones (median {b:,.0f} against "
                           f"{a:,.0f} characters); validation, drawn from train, does not measure routes there")
    return out


def _split_order(s: str | None) -> tuple[int, str]:
    return (schemas.SPLITS.index(s), "") if s in schemas.SPLITS else (len(schemas.SPLITS), str(s))


def summary(ds: Dataset) -> dict:
    """Counts a user checks after an import: queries, models, outcome rows, splits, tasks."""
    splits = Counter(ds.queries.column("split").to_pylist())
    tasks = Counter(ds.queries.column("task").to_pylist())
    per_model = Counter(ds.outcomes.column("model").to_pylist())
    return {
        "queries": ds.queries.num_rows,
        "models": len(per_model),
        "outcomes": ds.outcomes.num_rows,
        "splits": {str(k): v for k, v in sorted(splits.items(), key=lambda kv: _split_order(kv[0]))},
        "tasks": {str(k): v for k, v in sorted(tasks.items(), key=lambda kv: str(kv[0]))},
        "outcomes_per_model": dict(sorted(per_model.items())),
    }
