"""Converters from the public per-query result layouts to the canonical dataset.

Each importer takes the file contents (text) and returns an ``ImportResult``: the dataset, the
cells it could not convert (as rejects, with row and column), and notes a user should read.
Blank cells mean "not measured" and produce no outcome row; they are counted, never read as 0.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from . import schemas
from .dataset import Dataset
from .errors import DataError

IMPORTERS = ("routerbench", "llmrouter", "routellm")

# RouteLLM ships no prices. List prices in USD per million tokens, as published by the providers
# for these two models (OpenAI for gpt-4-1106-preview; Mixtral 8x7B Instruct as priced by the
# NVIDIA-hosted pool of the LLMRouter data, which matches common hosting prices).
ROUTELLM_DEFAULT_PRICES = {
    "gpt-4-1106-preview": (10.0, 30.0),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": (0.6, 0.6),
}

# A rough token count for price estimation only: about 4 characters per token for English text.
CHARS_PER_TOKEN = 4.0


@dataclass
class ImportResult:
    dataset: Dataset
    rejects: pa.Table
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)


def decode_source(data: bytes, source: str) -> str:
    """A source file's text: gzip-compressed files (by their magic bytes, whatever the name) are
    decompressed first; the text must be UTF-8."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{source}: not a readable gzip file ({e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{source}: not valid UTF-8 at byte {e.start}") from None


def _read_csv(text: str, source: str, required: list[str]) -> tuple[list[str], list[list[str]]]:
    csv.field_size_limit(2**31 - 1)
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if header is None:
            raise DataError(f"{source}: file is empty")
        rows = list(reader)
    except csv.Error as e:
        raise DataError(f"{source}: not a readable CSV ({e})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{source}: missing column(s) {', '.join(missing)}")
    width = len(header)
    for i, r in enumerate(rows):
        if len(r) != width:
            raise DataError(f"{source}: row {i} has {len(r)} fields, header has {width}")
    return header, rows


def _unique_ids(base_ids: list[str]) -> tuple[list[str], int]:
    """Keep each id; make later repeats unique as ``id#2``, ``id#3`` (file order, stable)."""
    seen: Counter[str] = Counter()
    out = []
    for b in base_ids:
        seen[b] += 1
        out.append(b if seen[b] == 1 else f"{b}#{seen[b]}")
    return out, sum(v - 1 for v in seen.values())


def _text_id(prefix: str, text: str) -> str:
    return f"{prefix}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:12]}"


def _norm_split(s: str) -> str | None:
    s = s.strip().lower()
    return {"": None, "validation": "val", "valid": "val", "dev": "val"}.get(s, s)


def hash_split(query_id: str, seed: int, val_frac: float, test_frac: float) -> str:
    """A stable split from a seeded hash of the query id (independent of file order)."""
    h = hashlib.sha256(f"{seed}:{query_id}".encode("utf-8")).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    if u < test_frac:
        return "test"
    if u < test_frac + val_frac:
        return "val"
    return "train"


class _Outcomes:
    """Accumulates outcome rows and conversion rejects."""

    def __init__(self, source: str):
        self.source = source
        self.rows: dict[str, list] = {f.name: [] for f in schemas.OUTCOMES}
        self.rejects: list[dict] = []
        self.blank = 0
        self.cells = 0

    def add(self, row: int, qid: str, model: str, score_cell: str, cost_cell: str | None = None,
            score_map: dict[str, float] | None = None) -> None:
        self.cells += 1
        cell = score_cell.strip()
        if cell == "":
            self.blank += 1
            return
        try:
            score = score_map[cell] if score_map is not None else float(cell)
        except (KeyError, ValueError):
            self.rejects.append(dict(source=self.source, row=row, query_id=qid, model=model,
                                     column=model, reason=f"score {cell[:40]!r} is not a number"))
            return
        cost = None
        if cost_cell is not None and cost_cell.strip():
            try:
                cost = float(cost_cell)
            except ValueError:
                self.rejects.append(dict(source=self.source, row=row, query_id=qid, model=model,
                                         column=f"{model}|total_cost",
                                         reason=f"cost {cost_cell[:40]!r} is not a number"))
                return
        self.rows["query_id"].append(qid)
        self.rows["model"].append(model)
        self.rows["score"].append(score)
        self.rows["cost_usd"].append(cost)
        self.rows["output_tokens"].append(None)

    def table(self) -> pa.Table:
        nullable = pa.schema([f.with_nullable(True) for f in schemas.OUTCOMES])
        return pa.table(self.rows, schema=nullable)


def _queries_table(qids, texts, splits, tasks) -> pa.Table:
    nullable = pa.schema([f.with_nullable(True) for f in schemas.QUERIES])
    return pa.table({"query_id": qids, "text": texts, "split": splits, "task": tasks}, schema=nullable)


def _counts(queries: pa.Table, acc: _Outcomes, models: list[str], dup_ids: int) -> dict[str, int]:
    return {
        "source_rows": queries.num_rows,
        "models": len(models),
        "cells": acc.cells,
        "blank_cells": acc.blank,
        "outcomes": len(acc.rows["query_id"]),
        "cells_rejected": len(acc.rejects),
        "renamed_duplicate_ids": dup_ids,
    }


# -- price estimation -------------------------------------------------------------------------

def estimate_prices(in_tokens: np.ndarray, out_tokens: np.ndarray | None, cost: np.ndarray) -> tuple[float, float]:
    """Non-negative least-squares fit of ``cost = a * in_tokens + b * out_tokens``.

    Returns (a, b) in dollars per token. With no output counts, a single price is fitted for both.
    """
    mask = np.isfinite(cost) & (cost >= 0)
    x_in, y = in_tokens[mask].astype(float), cost[mask].astype(float)
    if len(y) == 0:
        raise ValueError("no observed costs to fit")

    def single(x: np.ndarray) -> float:
        d = float(x @ x)
        return max(float(x @ y) / d, 0.0) if d > 0 else 0.0

    if out_tokens is None:
        a = single(x_in)
        return a, a
    x_out = out_tokens[mask].astype(float)
    X = np.stack([x_in, x_out], axis=1)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    if (coef >= 0).all():
        return float(coef[0]), float(coef[1])
    # One coefficient wants to be negative: the optimum lies on an axis; take the better one.
    a, b = single(x_in), single(x_out)
    err_a = float(np.sum((y - a * x_in) ** 2))
    err_b = float(np.sum((y - b * x_out) ** 2))
    return (a, 0.0) if err_a <= err_b else (0.0, b)


# -- RouterBench ------------------------------------------------------------------------------

_RB_META = {"sample_id", "prompt", "eval_name", "oracle_model_to_route_to", "split"}
_RB_REQUIRED = ["sample_id", "prompt", "eval_name", "split"]


def import_routerbench(text: str, source: str = "routerbench_wide.csv",
                       pool: schemas.Pool | None = None) -> ImportResult:
    """RouterBench's wide layout: one correctness column per model, ``<model>|total_cost``, and each
    response as ``<model>|model_response`` (or its length, ``<model>|response_chars``: the compact
    copy that ``compact_routerbench`` writes)."""
    header, rows = _read_csv(text, source, _RB_REQUIRED)
    col = {h: i for i, h in enumerate(header)}
    models = [h for h in header if "|" not in h and h not in _RB_META]
    if not models:
        raise DataError(f"{source}: no model columns found")
    qids, dup = _unique_ids([r[col["sample_id"]] for r in rows])
    texts = [r[col["prompt"]] for r in rows]
    queries = _queries_table(qids, texts, [_norm_split(r[col["split"]]) for r in rows],
                             [r[col["eval_name"]] or None for r in rows])
    acc = _Outcomes(source)
    for i, (qid, r) in enumerate(zip(qids, rows)):
        for m in models:
            cost_i = col.get(f"{m}|total_cost")
            acc.add(i, qid, m, r[col[m]], r[cost_i] if cost_i is not None else None)
    notes = []
    if dup:
        notes.append(f"{source}: {dup} repeated sample_id(s) kept as separate queries, renamed <id>#2")
    if pool is None:
        pool = _estimate_routerbench_pool(header, rows, models, texts, source)
        notes.append("pool.yaml: RouterBench ships no prices; prices were estimated from observed "
                     "costs and prompt/response lengths (about 4 characters per token)")
    return ImportResult(Dataset(queries, acc.table(), pool), schemas.rejects_table(acc.rejects),
                        _counts(queries, acc, models, dup), notes)


def _response_chars(source: str, col: dict[str, int], rows: list[list[str]], model: str) -> list[int] | None:
    """Each row's response length in characters: the ``<model>|model_response`` text's length, or
    the compact layout's ``<model>|response_chars`` count; None where the file has neither.
    ``col``: the header's column indices."""
    if (ri := col.get(f"{model}|model_response")) is not None:
        return [len(r[ri]) for r in rows]
    if (ci := col.get(f"{model}|response_chars")) is None:
        return None
    out = []
    for i, r in enumerate(rows):
        cell = r[ci].strip()
        if not cell.isdigit():
            raise DataError(f"{source}: row {i}, column {model}|response_chars: {cell[:40]!r} is not a "
                            "character count")
        out.append(int(cell))
    return out


def compact_routerbench(text: str, source: str = "routerbench_wide.csv") -> str:
    """RouterBench's wide layout without the response texts, the bulk of the file: each
    ``<model>|model_response`` becomes ``<model>|response_chars``, its length (all the importer
    reads of it); ``oracle_model_to_route_to`` is dropped. Every other cell is kept as written, so
    both files import to the same dataset and the same estimated prices."""
    header, rows = _read_csv(text, source, _RB_REQUIRED)
    keep = [i for i, h in enumerate(header) if h != "oracle_model_to_route_to"]
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([header[i].replace("|model_response", "|response_chars") for i in keep])
    for r in rows:
        w.writerow([str(len(r[i])) if header[i].endswith("|model_response") else r[i] for i in keep])
    return buf.getvalue()


def _estimate_routerbench_pool(header, rows, models, texts, source: str = "routerbench_wide.csv") -> schemas.Pool:
    col = {h: i for i, h in enumerate(header)}
    in_tok = np.array([math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts], dtype=float)
    out = []
    for m in models:
        ci = col.get(f"{m}|total_cost")
        if ci is None:
            raise DataError(f"RouterBench: no prices for {m}: pass --pool (no '{m}|total_cost' column)")
        cost = np.array([_float_or_nan(r[ci]) for r in rows])
        chars = _response_chars(source, col, rows, m)
        out_tok = (np.array([math.ceil(n / CHARS_PER_TOKEN) for n in chars], dtype=float)
                   if chars is not None else None)
        try:
            a, b = estimate_prices(in_tok, out_tok, cost)
        except ValueError:
            raise DataError(f"RouterBench: no observed costs for {m}: pass --pool") from None
        out.append(schemas.PoolModel(
            name=m, price_in_per_mtok=round(a * 1e6, 4), price_out_per_mtok=round(b * 1e6, 4),
            price_source="estimated: least squares of observed cost on estimated token counts"))
    return schemas.Pool(models=out, note="prices estimated from RouterBench's observed per-query costs")


def _float_or_nan(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return float("nan")


# -- LLMRouter --------------------------------------------------------------------------------

_LR_META = {"split", "task_name", "metric", "ground_truth", "question"}


def import_llmrouter(text: str, candidates_json: str | None, source: str = "scores_wide.csv",
                     candidates_source: str = "llm_candidates.json",
                     pool: schemas.Pool | None = None) -> ImportResult:
    """LLMRouter's ``scores_wide.csv`` (graded scores kept) with prices from ``llm_candidates.json``."""
    header, rows = _read_csv(text, source, ["split", "task_name", "question"])
    col = {h: i for i, h in enumerate(header)}
    models = [h for h in header if h not in _LR_META]
    if not models:
        raise DataError(f"{source}: no model columns found")
    tasks = [r[col["task_name"]] or None for r in rows]
    qtexts = [r[col["question"]] for r in rows]
    qids, dup = _unique_ids([_text_id(t or "query", q) for t, q in zip(tasks, qtexts)])
    queries = _queries_table(qids, qtexts, [_norm_split(r[col["split"]]) for r in rows], tasks)
    acc = _Outcomes(source)
    for i, (qid, r) in enumerate(zip(qids, rows)):
        for m in models:
            acc.add(i, qid, m, r[col[m]])
    notes = []
    if dup:
        notes.append(f"{source}: {dup} repeated (task, question) pair(s) kept as separate queries, renamed <id>#2")
    if pool is None:
        if candidates_json is None:
            raise DataError(f"{source}: no prices: put llm_candidates.json beside it or pass --pool")
        pool, missing = _pool_from_candidates(candidates_json, candidates_source, models)
        if missing:
            notes.append(f"{candidates_source}: no price for {', '.join(missing)}; their outcomes are rejected")
    return ImportResult(Dataset(queries, acc.table(), pool), schemas.rejects_table(acc.rejects),
                        _counts(queries, acc, models, dup), notes)


def _pool_from_candidates(text: str, source: str, models: list[str]) -> tuple[schemas.Pool, list[str]]:
    try:
        cands = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{source}: not valid JSON ({e})") from None
    if not isinstance(cands, dict):
        raise DataError(f"{source}: expected an object keyed by model name")
    out, missing = [], []
    for m in models:
        c = cands.get(m)
        if not isinstance(c, dict) or "input_price" not in c or "output_price" not in c:
            missing.append(m)
            continue
        try:
            out.append(schemas.PoolModel(name=m, price_in_per_mtok=float(c["input_price"]),
                                         price_out_per_mtok=float(c["output_price"]),
                                         price_source=f"list price from {source}"))
        except (TypeError, ValueError) as e:
            raise DataError(f"{source}: {m}: bad price ({str(e).splitlines()[0]})") from None
    if not out:
        raise DataError(f"{source}: none of the models in the scores file has a price")
    return schemas.Pool(models=out), missing


# -- RouteLLM ---------------------------------------------------------------------------------

_RL_META = {"prompt", "subject", "benchmark"}


def import_routellm(text: str, source: str = "mmlu_gsm8k_wide.csv", pool: schemas.Pool | None = None,
                    seed: int = 0, val_frac: float = 0.1, test_frac: float = 0.2) -> ImportResult:
    """RouteLLM's two-model True/False layout; the split is a seeded hash of the query id."""
    header, rows = _read_csv(text, source, ["prompt", "benchmark"])
    col = {h: i for i, h in enumerate(header)}
    models = [h for h in header if h not in _RL_META]
    if not models:
        raise DataError(f"{source}: no model columns found")
    texts = [r[col["prompt"]] for r in rows]
    bench = [r[col["benchmark"]] or "query" for r in rows]
    qids, dup = _unique_ids([_text_id(b, t) for b, t in zip(bench, texts)])
    subj = [r[col["subject"]] if "subject" in col else "" for r in rows]
    tasks = [f"{b}/{s}" if s else b for b, s in zip(bench, subj)]
    splits = [hash_split(q, seed, val_frac, test_frac) for q in qids]
    queries = _queries_table(qids, texts, splits, tasks)
    acc = _Outcomes(source)
    tf = {"True": 1.0, "False": 0.0, "true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0}
    for i, (qid, r) in enumerate(zip(qids, rows)):
        for m in models:
            acc.add(i, qid, m, r[col[m]], score_map=tf)
    notes = [f"split: seeded hash of query_id (seed {seed}, val {val_frac}, test {test_frac})"]
    if dup:
        notes.append(f"{source}: {dup} repeated prompt(s) kept as separate queries, renamed <id>#2")
    if pool is None:
        unknown = [m for m in models if m not in ROUTELLM_DEFAULT_PRICES]
        if unknown:
            raise DataError(f"{source}: no default price for {', '.join(unknown)}: pass --pool")
        pool = schemas.Pool(models=[
            schemas.PoolModel(name=m, price_in_per_mtok=ROUTELLM_DEFAULT_PRICES[m][0],
                              price_out_per_mtok=ROUTELLM_DEFAULT_PRICES[m][1], price_source="list price")
            for m in models])
        notes.append("pool.yaml: RouteLLM ships no prices; public list prices used (pass --pool to override)")
    return ImportResult(Dataset(queries, acc.table(), pool), schemas.rejects_table(acc.rejects),
                        _counts(queries, acc, models, dup), notes)
