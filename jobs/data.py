"""Stages ``import`` and ``validate``: public layouts to the canonical dataset, and its checks."""

from __future__ import annotations

import json
import logging
import posixpath
from dataclasses import dataclass

import pyarrow as pa

from router_core import importers, validation
from router_core.config import AppConfig
from router_core.dataset import (
    OUTCOMES_FILE,
    QUERIES_FILE,
    REJECTS_FILE,
    load_dataset,
    parse_pool,
    save_dataset,
)
from router_core.errors import DataError
from router_core.storage import Storage, join

from .common import format_table, storage_from

log = logging.getLogger(__name__)


@dataclass
class ImportRun:
    counts: dict
    summary: dict
    notes: list[str]
    rejects: pa.Table
    out: str


def run_import(cfg: AppConfig, fmt: str, src: str, out: str, pool_uri: str | None = None,
               candidates_uri: str | None = None) -> ImportRun:
    """Convert ``src`` (format ``fmt``) to a canonical dataset at ``out``; rejects beside it."""
    storage = storage_from(cfg)
    if fmt not in importers.IMPORTERS:
        raise DataError(f"unknown format {fmt!r} (choose from {', '.join(importers.IMPORTERS)})")
    pool = parse_pool(storage.read_text(pool_uri), pool_uri) if pool_uri else None
    text = importers.decode_source(storage.read_bytes(src), src)  # .csv or .csv.gz
    name = posixpath.basename(src.rstrip("/"))
    log.info("importing %s (%s, %.1f MB)", src, fmt, len(text) / 1e6)
    if fmt == "routerbench":
        res = importers.import_routerbench(text, name, pool)
    elif fmt == "llmrouter":
        cand = candidates_uri or join(posixpath.dirname(src.rstrip("/")) or ".", "llm_candidates.json")
        cand_text = storage.read_text(cand) if (pool is None and storage.exists(cand)) else None
        res = importers.import_llmrouter(text, cand_text, name, posixpath.basename(cand), pool)
    else:
        ic = cfg.import_
        res = importers.import_routellm(text, name, pool, ic.seed, ic.val_frac, ic.test_frac)

    checked = validation.validate(res.dataset, QUERIES_FILE, OUTCOMES_FILE)
    rejects = pa.concat_tables([res.rejects, checked.rejects])
    save_dataset(storage, out, checked.dataset)
    _write_rejects(storage, out, rejects)
    counts = dict(res.counts)
    counts.update({k: v for k, v in checked.counts.items()})
    summary = validation.summary(checked.dataset)
    notes = res.notes + checked.warnings
    storage.write_text(join(out, "import.json"), json.dumps(
        {"format": fmt, "source": src, "counts": counts, "summary": summary, "notes": notes}, indent=2))
    return ImportRun(counts, summary, notes, rejects, out)


def _write_rejects(storage: Storage, root: str, rejects: pa.Table) -> None:
    uri = join(root, REJECTS_FILE)
    if rejects.num_rows:
        storage.write_table(rejects, uri)
    elif storage.exists(uri):
        storage.delete(uri)  # a rerun that rejects nothing must not leave an old rejects file


def print_import(run: ImportRun) -> None:
    c = run.counts
    print(f"imported {run.out}")
    print(f"  rows:     {c['source_rows']} source rows -> {c['queries_ok']} queries"
          f" + {c['queries_rejected']} rejected")
    print(f"  cells:    {c['cells']} model cells = {c['outcomes']} outcomes + {c['blank_cells']} blank"
          f" (not measured) + {c['cells_rejected']} unconvertible")
    print(f"  outcomes: {c['outcomes_ok']} accepted + {c['outcomes_rejected']} rejected by validation")
    _print_summary(run.summary)
    for n in run.notes:
        print(f"  note: {n}")
    if run.rejects.num_rows:
        print(f"  rejects: {run.rejects.num_rows} rows in {join(run.out, REJECTS_FILE)}")


def _print_summary(s: dict) -> None:
    splits = " / ".join(f"{k} {v}" for k, v in s["splits"].items())
    print(f"  dataset:  {s['queries']} queries, {s['models']} models, {s['outcomes']} outcome rows")
    print(f"  splits:   {splits}")
    print(f"  tasks:    {len(s['tasks'])} ({', '.join(list(s['tasks'])[:6])}{', ...' if len(s['tasks']) > 6 else ''})")


@dataclass
class ValidateRun:
    result: validation.ValidationResult
    summary: dict
    uri: str


def run_validate(cfg: AppConfig, uri: str, rejects_uri: str | None = None) -> ValidateRun:
    storage = storage_from(cfg)
    ds = load_dataset(storage, uri)
    res = validation.validate(ds, join(uri, QUERIES_FILE), join(uri, OUTCOMES_FILE))
    if rejects_uri and res.rejects.num_rows:
        storage.write_table(res.rejects, rejects_uri)
    return ValidateRun(res, validation.summary(res.dataset), uri)


def print_validate(run: ValidateRun, limit: int = 20) -> None:
    r = run.result
    c = r.counts
    print(f"validated {run.uri}: {'OK' if r.ok else 'rows rejected'}")
    print(f"  queries:  {c['queries_in']} = {c['queries_ok']} ok + {c['queries_rejected']} rejected")
    print(f"  outcomes: {c['outcomes_in']} = {c['outcomes_ok']} ok + {c['outcomes_rejected']} rejected")
    _print_summary(run.summary)
    per_model = run.summary["outcomes_per_model"]
    print(format_table(["model", "outcomes"], [[m, n] for m, n in per_model.items()]))
    for w in r.warnings:
        print(f"  warning: {w}")
    rows = r.rejects.to_pylist()
    for row in rows[:limit]:
        where = f"{row['source']}: row {row['row']}"
        if row["query_id"] is not None:
            where += f" (query_id {row['query_id']!r})"
        if row["model"]:
            where += f" model {row['model']!r}"
        print(f"  reject: {where} column '{row['column']}': {row['reason']}")
    if len(rows) > limit:
        print(f"  ... and {len(rows) - limit} more (write them all with --rejects PATH)")
