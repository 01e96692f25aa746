"""A bulk query set read once and keyed: the accepted rows by (query_id, text_hash), the rest rejected.

What ``extract`` and ``route`` both start from: a dataset folder (its queries.parquet or
queries/), a Parquet file, or a folder or prefix of parts; only ``query_id`` and ``text`` are needed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from . import schemas
from .dataset import conform, table_uri
from .errors import DataError
from .extraction import text_hashes
from .storage import Storage
from .validation import check_queries

log = logging.getLogger(__name__)


def read_queries(storage: Storage, uri: str) -> tuple[pa.Table, str]:
    """(the queries conformed to the schema, the file or folder they were read from)."""
    try:
        src = table_uri(storage, uri, "queries")
    except DataError:
        src = uri
    # A bulk query set needs only query_id and text; split and task are the dataset's business.
    table, warnings = conform(storage.read_table(src), schemas.QUERIES, src, optional=("split", "task"))
    for w in warnings:
        log.warning(w)
    if table.num_rows == 0:
        raise DataError(f"{src}: holds no rows")
    return table, src


@dataclass
class PreparedQueries:
    """A queries table read and checked once: accepted rows keyed by (query_id, text_hash)."""

    queries: pa.Table  # conformed, every input row
    src: str
    keep: list[int]  # accepted row indices
    rejects: list[dict]
    kept: pa.Table  # query_id, text (task where given), text_hash of the accepted rows, in input order


def prepare_queries(storage: Storage, uri: str,
                    hash_texts: Callable[[pa.ChunkedArray], pa.Array] = text_hashes) -> PreparedQueries:
    """Read and check ``uri``; ``hash_texts`` may spread the hashing of a large batch over workers."""
    queries, src = read_queries(storage, uri)
    keep, rejects, _ = check_queries(queries, src, check_split=False)  # only id and text matter here
    # The task column travels with the rows where given: a router that reads it (a mix with the task
    # prior) must see at route time what it saw in evaluation.
    kept = queries.select(["query_id", "text"] + (["task"] if "task" in queries.column_names else []))
    if len(keep) < queries.num_rows:
        kept = kept.take(pa.array(keep, pa.int64()))
    kept = kept.append_column("text_hash", hash_texts(kept.column("text")))
    return PreparedQueries(queries, src, keep, rejects, kept)
