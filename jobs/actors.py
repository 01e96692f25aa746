"""The Ray pieces that run models: the encoder actor pool (Ray Data) and the prediction tasks of
``route`` (the Ray Train workers that fit SharedTrunkNet members: jobs.train_workers). Each loads
its model once per process: the encoder in the actor's ``__init__``, the router on a worker's
first prediction task."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa

from router_core import schemas
from router_core.config import AppConfig, ExtractConfig
from router_core.encoders import resolve_encoder
from router_core.errors import ArtifactError
from router_core.features import part_digests, part_name, verify_part, write_part
from router_core.routers import RouterInputs, load_router, predict_any
from router_core.storage import Storage, join

from .progress import Progress, ProgressCounter
from .runtime import default_cache_dir, ensure_ray, quiet_model_loading, quiet_ray_data, user_error, verbose


# -- extraction ---------------------------------------------------------------------------------
class ExtractActor:
    """One encoder per actor, loaded once; each call encodes a block and writes its part file."""

    def __init__(self, ecfg: dict, cache_dir: str | None, identity: str, parts_uri: str, storage: dict,
                 threads: int | None, actors: int = 1, progress=None,
                 quiet: bool = False):
        import torch

        from router_core.extraction import Encoder

        if quiet:
            quiet_model_loading()
        # Ray sets OMP_NUM_THREADS=1 for a fractional-CPU actor; an encoder wants the cores it shares.
        self.threads = threads or max(1, (os.cpu_count() or 1) // max(1, actors))
        self.torch = torch
        self.cfg = ExtractConfig.model_validate(ecfg)
        # No cache_dir configured: this node's own cache, never a path of the driver's machine.
        resolved = resolve_encoder(self.cfg.encoder, cache_dir or default_cache_dir(), self.cfg.revision)
        if resolved.identity != identity:
            raise ArtifactError(f"encoder on this node is {resolved.identity}, the job expects {identity}")
        self.encoder = Encoder(self.cfg, resolved.path, resolved.revision)
        self.parts_uri = parts_uri
        self.storage = Storage(**storage)
        self.progress = progress  # a ProgressCounter actor: told rows and tokens after each forward batch

    def _tell(self, rows: int, tokens: int) -> None:
        self.progress.add.remote(rows, tokens)  # fire and forget: display only

    def __call__(self, batch: pa.Table) -> pa.Table:
        # OpenMP's thread count is per calling thread, and Ray Data calls from another thread
        # than __init__'s: set it here, or matmuls run on one core (measured: 1.9x slower).
        self.torch.set_num_threads(self.threads)
        qids = batch.column("query_id").to_pylist()
        texts = batch.column("text").to_pylist()
        hashes = batch.column("text_hash").to_pylist()
        res = self.encoder.extract(texts, self._tell if self.progress is not None else None)
        ok = np.array([e is None for e in res.errors])
        part = None
        if ok.any():
            idx = np.flatnonzero(ok)
            cols = {
                "query_id": pa.array([qids[i] for i in idx], pa.string()),
                "text_hash": pa.array([hashes[i] for i in idx], pa.string()),
                "n_tokens": pa.array(res.n_tokens[idx], pa.int32()),
                "truncated": pa.array(res.truncated[idx], pa.bool_()),
            }
            for c in self.encoder.columns:
                cols[c] = schemas.encode_vectors(res.features[c][idx])
            table = pa.table(cols, schema=schemas.features_schema(self.encoder.columns, self.encoder.hidden_size))
            name = part_name([qids[i] for i in idx], [hashes[i] for i in idx])
            self.storage.write_bytes(join(self.parts_uri, name), write_part(table))
            part = json.dumps({"name": name, "rows": int(ok.sum()), "sha256": part_digests(table)})
        s = res.stats
        n = len(qids)
        return pa.table({
            "query_id": qids,
            "error": res.errors,
            "n_tokens": res.n_tokens,
            "truncated": res.truncated,
            # Per-call figures, repeated on each row; the driver reads them once per call.
            "call_id": [part_name(qids, hashes)] * n,
            "call_part": pa.array([part] * n, pa.string()),  # the part written (JSON: name, rows, digests)
            "call_seconds": [s.seconds] * n,
            "call_computed_tokens": [s.computed_tokens] * n,
            "call_padded_slots": [s.padded_slots] * n,
            "call_prefix_groups": [s.prefix_groups] * n,
            "call_peak_rss_mb": [_peak_rss_mb()] * n,
        })


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_actor_pool(cfg: AppConfig, todo: pa.Table, identity: str, parts_uri: str, storage: Storage,
                   on_result=None, memory_mb: float | None = None) -> pa.Table:
    """Encode ``todo`` (query_id, text, text_hash) in blocks of ``extract.rows_per_task`` over the
    actor pool; ``on_result(batch)`` sees each finished call's rows. Returns every call's rows.
    Each actor asks the scheduler for ``memory_mb``; rows, tokens/s and an ETA are shown meanwhile."""
    ray = ensure_ray(cfg)
    quiet_ray_data(ray)
    ecfg = cfg.extract
    k = ecfg.rows_per_task
    counter = ray.remote(num_cpus=0)(ProgressCounter).remote()
    ds = ray.data.from_arrow([todo.slice(i, k) for i in range(0, todo.num_rows, k)])
    out = ds.map_batches(
        ExtractActor,
        fn_constructor_kwargs=dict(ecfg=ecfg.model_dump(), cache_dir=ecfg.cache_dir, identity=identity,
                                   parts_uri=parts_uri, storage=storage.settings(), threads=ecfg.torch_threads,
                                   actors=ecfg.actors, progress=counter, quiet=not verbose()),
        batch_size=k,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=ecfg.actors),
        num_cpus=ecfg.actor_num_cpus,
        num_gpus=ecfg.actor_num_gpus or None,
        resources=ecfg.actor_resources or None,
        **({"memory": int(memory_mb * 2**20)} if memory_mb else {}),
    )
    results = []
    try:
        with Progress("extract", todo.num_rows, lambda: ray.get(counter.read.remote(), timeout=10)):
            for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
                if on_result is not None:
                    on_result(batch)
                results.append(batch)
    except Exception as e:  # noqa: BLE001 - an actor's user-facing error, as one line
        err = user_error(e)
        if err is None or err is e:
            raise
        raise err from None
    finally:
        ray.kill(counter)
    return pa.concat_tables(results)


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
                  columns: list[str], dim: int, threads: int, tasks: list[str | None] | None = None) -> np.ndarray:
    """A Ray task of ``route``: P(correct) of the given rows of each part ((URI, manifest entry, rows
    or None for all of them) triples), in that order; each column read is checked against its digest.
    ``tasks``: the queries' tasks in that order, for a router that reads them (None: unknown).
    The router is loaded once per worker process (kept by folder and weights digest), not per task."""
    import torch

    torch.set_num_threads(threads)
    storage = Storage(**storage_kw)
    if (folder, digest) not in _ROUTERS:
        _ROUTERS.clear()
        _ROUTERS[(folder, digest)] = load_router(storage, folder)[0]
    router = _ROUTERS[(folder, digest)]
    probas, at = [], 0
    for part, entry, rows in parts:
        t = storage.read_table(part, columns=columns)
        verify_part(t, entry["sha256"], part)
        if rows is not None:  # some of the part's rows: copy those (the common case reads whole parts)
            t = t.take(pa.array(rows))
        x = {c: schemas.decode_vectors(t.column(c), dim) for c in columns}
        part_tasks = tasks[at : at + t.num_rows] if tasks is not None else None
        at += t.num_rows
        probas.append(predict_any(router, RouterInputs(n=t.num_rows, prefill=x, tasks=part_tasks)).astype(np.float32))
    return np.concatenate(probas) if probas else np.zeros((0, 0), np.float32)
