"""New labelled outcomes for ``retrain``: the batch folders under ``retrain.new``, and a dataset with
them merged in (new queries join ``train``, so the test split stays the one models are judged on;
the latest measurement of a (query, model) wins; a model with no price is rejected with that reason).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from . import schemas
from .dataset import Dataset, conform, parse_pool
from .errors import DataError
from .storage import Storage, join


def batch_folders(storage: Storage, new_prefix: str) -> list[str]:
    """Every batch folder under ``new_prefix`` (one holding outcomes.parquet), in name order."""
    return sorted({f.rsplit("/", 1)[0] for f in storage.list_files(new_prefix, "outcomes.parquet")})


def merge_new(storage: Storage, base: Dataset, new_prefix: str, none_ok: bool = False,
              skip: frozenset[str] = frozenset()) -> tuple[Dataset, list[dict], dict]:
    """The base dataset plus every batch under ``new_prefix`` but those in ``skip`` (already in the
    base); rejects of rows that cannot join. ``none_ok``: no batch gives the base as it is (the first
    model), else an error."""
    batches = [b for b in batch_folders(storage, new_prefix) if b not in skip]
    if not batches and none_ok:
        return base, [], {"batches": 0, "new_queries": 0, "new_outcomes": 0, "new_models": [], "batch_names": []}
    if not batches:
        raise DataError(f"{new_prefix}: no batch folder with outcomes.parquet")
    pool = base.pool.model_copy(deep=True)
    known = set(pool.names)
    queries, outcomes, rejects = [base.queries], [], []
    have_q = set(base.queries.column("query_id").to_pylist())
    counts = {"batches": len(batches), "new_queries": 0, "new_outcomes": 0, "new_models": [], "batch_names": batches}
    for b in batches:
        src = join(b, "outcomes.parquet")
        o, _ = conform(storage.read_table(src), schemas.OUTCOMES, src)
        if storage.exists(join(b, "pool.yaml")):
            extra = parse_pool(storage.read_text(join(b, "pool.yaml")), join(b, "pool.yaml"))
            for m in extra.models:
                if m.name not in known:
                    pool.models.append(m)
                    known.add(m.name)
                    counts["new_models"].append(m.name)
        models = o.column("model").to_pylist()
        ok = [m in known for m in models]
        for i, (m, good) in enumerate(zip(models, ok)):
            if not good:
                rejects.append(dict(source=src, row=i, query_id=o.column("query_id")[i].as_py(), model=m,
                                    column="model", reason=f"model {m} is not in the pool and {join(b, 'pool.yaml')} "
                                    "gives no price for it"))
        outcomes.append(o.filter(pa.array(ok)))
        if storage.exists(join(b, "queries.parquet")):
            qsrc = join(b, "queries.parquet")
            q, _ = conform(storage.read_table(qsrc), schemas.QUERIES, qsrc)
            fresh = pa.array([x not in have_q for x in q.column("query_id").to_pylist()])
            q = q.filter(fresh)
            q = q.set_column(q.schema.get_field_index("split"), "split", pa.array(["train"] * q.num_rows, pa.string()))
            have_q |= set(q.column("query_id").to_pylist())
            queries.append(q)
            counts["new_queries"] += q.num_rows
    new_o = pa.concat_tables(outcomes)
    counts["new_outcomes"] = new_o.num_rows
    # A new outcome replaces the base's for the same (query, model): the latest measurement wins.
    key = pc.binary_join_element_wise(new_o.column("query_id"), new_o.column("model"), "\x1f")
    old = base.outcomes
    old_key = pc.binary_join_element_wise(old.column("query_id"), old.column("model"), "\x1f")
    old = old.filter(pc.invert(pc.is_in(old_key, value_set=key)))
    merged = Dataset(pa.concat_tables(queries), pa.concat_tables([old, new_o]), pool)
    return merged, rejects, counts


def onboard_batch(storage: Storage, batches: list[str], pool: list[str], max_rows: int) -> str | None:
    """The first of ``batches`` that ``onboard`` takes instead of a full retrain: outcomes of one
    model not in ``pool``, fewer than ``max_rows`` of them, its prices in pool.yaml."""
    for b in batches:
        if not storage.exists(join(b, "pool.yaml")):
            continue
        t = storage.read_table(join(b, "outcomes.parquet"), columns=["model"])
        models = set(t.column("model").to_pylist())
        if len(models) == 1 and not models & set(pool) and t.num_rows < max_rows:
            return b
    return None
