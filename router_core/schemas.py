"""The data contract: Arrow schemas of every table and the pool file's model.

A dataset is a folder (local path or ``s3://bucket/prefix``) holding ``queries.parquet``
(or ``queries/``), ``outcomes.parquet`` (or ``outcomes/``) and ``pool.yaml``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator

SPLITS = ("train", "val", "test")

QUERIES = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=True),
        pa.field("task", pa.string(), nullable=True),
    ]
)

OUTCOMES = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("cost_usd", pa.float64(), nullable=True),
        pa.field("output_tokens", pa.int64(), nullable=True),
    ]
)

# Every row that a stage refuses lands here, with the reason; input = output + rejects.
REJECTS = pa.schema(
    [
        pa.field("source", pa.string()),  # file (or table) the row came from
        pa.field("row", pa.int64()),  # 0-based row index in that source
        pa.field("query_id", pa.string()),
        pa.field("model", pa.string()),
        pa.field("column", pa.string()),
        pa.field("reason", pa.string()),
    ]
)



class PoolModel(BaseModel):
    """One target model of the pool, with list prices in US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    price_in_per_mtok: float = Field(ge=0)
    price_out_per_mtok: float = Field(ge=0)
    # Optional: where the prices come from ("list", or "estimated from observed costs ...").
    price_source: str | None = None

    @field_validator("price_in_per_mtok", "price_out_per_mtok")
    @classmethod
    def _finite(cls, v: float) -> float:
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        return v


class Pool(BaseModel):
    """The ``pool.yaml`` file: the target models and their prices."""

    model_config = ConfigDict(extra="forbid")

    models: list[PoolModel] = Field(min_length=1)
    note: str | None = None
    currency: Literal["USD"] = "USD"

    @field_validator("models")
    @classmethod
    def _unique(cls, v: list[PoolModel]) -> list[PoolModel]:
        seen: set[str] = set()
        for m in v:
            if m.name in seen:
                raise ValueError(f"model {m.name!r} listed twice")
            seen.add(m.name)
        return v

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def get(self, name: str) -> PoolModel:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)


def rejects_table(rows: list[dict]) -> pa.Table:
    """Build a rejects table from dicts with REJECTS' keys (missing keys become null)."""
    cols = {f.name: [r.get(f.name) for r in rows] for f in REJECTS}
    return pa.table(cols, schema=REJECTS)


# -- features -----------------------------------------------------------------------------------
# One row per (query, text): identity columns, then one float16 vector per (pooling, layer), named
# like ``mean_12`` or ``last_30``, stored as fixed-size binary (the vector's little-endian float16
# bytes). Parquet decodes a fixed_size_list<float16> value by value with its nesting levels, about
# 30x slower than the plain bytes (docs/extraction.md); readers take both layouts.
FEATURE_KEYS = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("text_hash", pa.string(), nullable=False),  # sha256 of the UTF-8 text
        pa.field("n_tokens", pa.int32(), nullable=False),  # after truncation
        pa.field("truncated", pa.bool_(), nullable=False),
    ]
)


def features_schema(columns: list[str], dim: int) -> pa.Schema:
    vec = pa.binary(2 * dim)
    return pa.schema(list(FEATURE_KEYS) + [pa.field(c, vec, nullable=False) for c in columns])


def encode_vectors(x: np.ndarray) -> pa.FixedSizeBinaryArray:
    """(n, d) array -> n fixed-size binary values of d little-endian float16."""
    x = np.ascontiguousarray(x, dtype="<f2")
    n, d = x.shape
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(2 * d), n, [None, pa.py_buffer(x.tobytes())])


def decode_vectors(col: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    """A vector column (fixed-size binary, or the older fixed_size_list<float16>) -> (n, dim) float16."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if col.null_count:
        raise ValueError(f"vector column holds {col.null_count} null value(s)")
    if pa.types.is_fixed_size_binary(col.type):
        if col.type.byte_width != 2 * dim:
            raise ValueError(f"vectors of {col.type.byte_width} bytes, expected {2 * dim} ({dim} float16)")
        buf = np.frombuffer(col.buffers()[1], dtype="<f2")
        return buf[col.offset * dim : (col.offset + len(col)) * dim].reshape(len(col), dim)
    if pa.types.is_fixed_size_list(col.type) and col.type.list_size == dim:
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), dim).astype(np.float16, copy=False)
    raise ValueError(f"vector column of type {col.type}, expected {dim} float16 values per row")
