"""The prediction tasks of ``route`` (the encoder actor pool is jobs.extract_pool; the Ray Train
workers that fit SharedTrunkNet members, jobs.train_workers). A worker loads the router on its
first prediction task, once per process."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from router_core import schemas
from router_core.features import verify_part
from router_core.lengths import LinearLengths
from router_core.routers import RouterInputs, load_router, predict_any
from router_core.storage import Storage


# -- prediction (route) ---------------------------------------------------------------------------
_ROUTERS: dict[tuple[str, str], object] = {}  # in each worker process: the router it last loaded


def plan_groups(located, n_groups: int) -> list[tuple[list[tuple[str, dict, np.ndarray | None]], np.ndarray]]:
    """Groups of parts for the prediction tasks, balanced by rows: each group lists its parts with the
    rows wanted of each (None = all, in order) and the input positions those rows fill."""
    order = np.lexsort((located.row, located.part))
    part, row, dst = located.part[order], located.row[order], located.dst[order]
    ids, starts = np.unique(part, return_index=True)
    ends = np.append(starts[1:], len(part))
    loads = [0] * n_groups
    groups: list[tuple[list, list]] = [([], []) for _ in range(n_groups)]
    for j, a, b in sorted(zip(ids, starts, ends), key=lambda z: z[1] - z[2]):  # largest first
        uri, entry = located.parts[j]
        rows = None if b - a == entry["rows"] else row[a:b]
        g = loads.index(min(loads))
        loads[g] += b - a
        groups[g][0].append((uri, entry, rows))
        groups[g][1].append(dst[a:b])
    return [(items, np.concatenate(d)) for items, d in groups if items]


def predict_parts(parts: list[tuple[str, dict, np.ndarray | None]], storage_kw: dict, folder: str, digest: str,
                  columns: list[str], dim: int, threads: int, tasks: list[str | None] | None = None,
                  lengths: LinearLengths | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """A Ray task of ``route``: P(correct) of the given rows of each part ((URI, manifest entry, rows
    or None for all of them) triples), in that order; each column read is checked against its digest.
    ``tasks``: the queries' tasks in that order, for a router that reads them (None: unknown).
    ``lengths``: the model's output-length map on the same columns, whose (n, K) output tokens are
    returned beside the probabilities (else None).
    The router is loaded once per worker process (kept by folder and weights digest), not per task."""
    import torch

    torch.set_num_threads(threads)
    storage = Storage(**storage_kw)
    if (folder, digest) not in _ROUTERS:
        _ROUTERS.clear()
        _ROUTERS[(folder, digest)] = load_router(storage, folder)[0]
    router = _ROUTERS[(folder, digest)]
    probas, tokens, at = [], [], 0
    for part, entry, rows in parts:
        t = storage.read_table(part, columns=columns)
        verify_part(t, entry["sha256"], part)
        if rows is not None:  # some of the part's rows: copy those (the common case reads whole parts)
            t = t.take(pa.array(rows))
        x = {c: schemas.decode_vectors(t.column(c), dim) for c in columns}
        part_tasks = tasks[at : at + t.num_rows] if tasks is not None else None
        at += t.num_rows
        probas.append(predict_any(router, RouterInputs(n=t.num_rows, prefill=x, tasks=part_tasks)).astype(np.float32))
        if lengths is not None:
            tokens.append(lengths.predict(x))
    proba = np.concatenate(probas) if probas else np.zeros((0, 0), np.float32)
    return proba, (np.concatenate(tokens) if tokens else None)
