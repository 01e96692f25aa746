"""Reading and writing canonical datasets: conform files to the schemas, load the pool."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import yaml
from pydantic import ValidationError

from . import schemas
from .errors import DataError
from .storage import Storage, join

QUERIES_FILE = "queries.parquet"
OUTCOMES_FILE = "outcomes.parquet"
POOL_FILE = "pool.yaml"
REJECTS_FILE = "rejects.parquet"


@dataclass
class Dataset:
    """The three parts of a canonical dataset, in memory."""

    queries: pa.Table
    outcomes: pa.Table
    pool: schemas.Pool
    warnings: list[str] = field(default_factory=list)


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual == expected or pa.types.is_null(actual):
        return True
    if pa.types.is_dictionary(actual):
        return _compatible(actual.value_type, expected)
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual) or pa.types.is_integer(actual)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    return False


def conform(table: pa.Table, schema: pa.Schema, source: str,
            optional: tuple[str, ...] = ()) -> tuple[pa.Table, list[str]]:
    """Check columns and types of ``table`` against ``schema`` and cast to it.

    Missing columns or incompatible types raise DataError naming ``source`` and the column; a
    missing column named in ``optional`` is filled with nulls instead. Extra columns are dropped and
    reported in the returned warnings. Nullability is not enforced here: null values are row-level
    problems for validation, not structural ones.
    """
    for name in optional:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {', '.join(missing)} "
            f"(expected {', '.join(schema.names)})"
        )
    warnings = []
    extra = [c for c in table.column_names if c not in schema.names]
    if extra:
        warnings.append(f"{source}: ignoring extra column(s) {', '.join(extra)}")
    cols = []
    for f in schema:
        col = table.column(f.name)
        if not _compatible(col.type, f.type):
            raise DataError(
                f"{source}: column '{f.name}' has type {col.type}, expected {f.type}"
            )
        cols.append(col.cast(f.type) if col.type != f.type else col)
    nullable = pa.schema([f.with_nullable(True) for f in schema])
    return pa.Table.from_arrays(cols, schema=nullable), warnings


def parse_pool(text: str, source: str = POOL_FILE) -> schemas.Pool:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DataError(f"{source}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{source}: expected a mapping with a 'models' list")
    try:
        return schemas.Pool.model_validate(raw)
    except ValidationError as e:
        raise DataError(f"{source}: {format_validation_error(e, raw)}") from None


def format_validation_error(e: ValidationError, raw: object = None) -> str:
    """One line from a pydantic error: each problem as 'path: message', with model names."""
    parts = []
    for err in e.errors():
        loc = list(err["loc"])
        label = ".".join(str(x) for x in loc) or "(root)"
        # models.3.price_in_per_mtok -> models[3] (name 'gpt-4').price_in_per_mtok
        if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int) and isinstance(raw, dict):
            try:
                name = raw["models"][loc[1]].get("name")
            except (AttributeError, IndexError, KeyError, TypeError):
                name = None
            rest = ".".join(str(x) for x in loc[2:])
            label = f"models[{loc[1]}]" + (f" ({name})" if name else "") + (f".{rest}" if rest else "")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required field missing"
        parts.append(f"{label}: {msg}")
    return "; ".join(parts)


def pool_to_yaml(pool: schemas.Pool) -> str:
    return yaml.safe_dump(pool.model_dump(exclude_none=True), sort_keys=False)


def table_uri(storage: Storage, root: str, name: str) -> str:
    """``root/name.parquet`` if it exists, else the folder ``root/name/``."""
    single = join(root, f"{name}.parquet")
    if storage.exists(single):
        return single
    folder = join(root, name)
    if storage.is_dir(folder):
        return folder
    raise DataError(f"{root}: no {name}.parquet (or {name}/ folder of Parquet parts)")


def read_table_conformed(storage: Storage, uri: str, schema: pa.Schema) -> tuple[pa.Table, list[str]]:
    return conform(storage.read_table(uri), schema, uri)


def load_dataset(storage: Storage, root: str) -> Dataset:
    """Read a dataset folder; structural problems raise DataError, row problems are left in."""
    if not storage.exists(root):
        raise DataError(f"{root}: dataset folder not found")
    q_uri = table_uri(storage, root, "queries")
    o_uri = table_uri(storage, root, "outcomes")
    queries, w1 = read_table_conformed(storage, q_uri, schemas.QUERIES)
    outcomes, w2 = read_table_conformed(storage, o_uri, schemas.OUTCOMES)
    pool_uri = join(root, POOL_FILE)
    pool = parse_pool(storage.read_text(pool_uri), pool_uri)
    return Dataset(queries, outcomes, pool, w1 + w2)


def save_dataset(storage: Storage, root: str, ds: Dataset) -> None:
    """Write the three files (each atomically). Outcomes first, queries, then the pool."""
    storage.write_table(ds.outcomes.cast(schemas.OUTCOMES), join(root, OUTCOMES_FILE))
    storage.write_table(ds.queries.cast(schemas.QUERIES), join(root, QUERIES_FILE))
    storage.write_text(join(root, POOL_FILE), pool_to_yaml(ds.pool))


def outcome_matrix(outcomes: pa.Table, query_ids: list[str], models: list[str], column: str = "score") -> np.ndarray:
    """(n, K) of ``column`` per query and model; NaN where the pair was not measured."""
    row = {q: i for i, q in enumerate(query_ids)}
    col = {m: k for k, m in enumerate(models)}
    out = np.full((len(query_ids), len(models)), np.nan)
    vals = outcomes.column(column).to_numpy(zero_copy_only=False)
    for q, m, v in zip(outcomes.column("query_id").to_pylist(), outcomes.column("model").to_pylist(), vals):
        i, k = row.get(q), col.get(m)
        if i is not None and k is not None and v is not None:
            out[i, k] = v
    return out
