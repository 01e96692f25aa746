"""The encoder actor pool of ``extract`` (Ray Data): each actor loads its encoder once, encodes the
blocks it is handed in parts sized by the rate it measures, and writes each part as it finishes;
the driver commits every part to the manifest as it comes, so a killed job loses at most the
part in progress. Sizing, resuming and the stall check: docs/extraction.md, "Block sizing"."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa

from router_core import schemas
from router_core.config import AppConfig, ExtractConfig
from router_core.encoders import resolve_encoder
from router_core.errors import ArtifactError, JobFailed
from router_core.extraction import ExtractStats, PartSizer
from router_core.features import part_digests, part_name, write_part
from router_core.storage import Storage, join

from .progress import Progress, ProgressCounter, StallWatch, part_entries, read_pool
from .runtime import default_cache_dir, ensure_ray, quiet_model_loading, quiet_ray_data, user_error, verbose

log = logging.getLogger(__name__)


class ExtractActor:
    """One encoder per actor, loaded once; each call encodes a block, one part file at a time.

    ``hook(encoder) -> encoder`` wraps the loaded encoder (tests make it slow or stuck with it)."""

    def __init__(self, ecfg: dict, cache_dir: str | None, identity: str, parts_uri: str, storage: dict,
                 threads: int | None, actors: int = 1, progress=None, quiet: bool = False,
                 hook: Callable | None = None):
        import ray
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
        encoder = Encoder(self.cfg, resolved.path, resolved.revision)
        self.encoder = hook(encoder) if hook is not None else encoder
        self.columns, self.dim = encoder.columns, encoder.hidden_size
        self.parts_uri = parts_uri
        self.storage = Storage(**storage)
        self.sizer = PartSizer(self.cfg.first_part_rows, self.cfg.part_seconds, self.cfg.rows_per_task)
        self.progress = progress  # a ProgressCounter actor
        self.ray = ray
        if progress is not None:
            progress.register.remote(ray.get_runtime_context().current_actor)

    def _refuse_if_halted(self) -> None:
        """The driver's stall check halted the job: a block retried here after it is not encoded."""
        if self.progress is not None and self.ray.get(self.progress.is_halted.remote()):
            raise JobFailed("extract: the job was halted by its stall check (extract.stall_timeout_s)")

    def _tell(self, rows: int, tokens: int) -> None:
        self.progress.add.remote(rows, tokens)  # fire and forget: display and the stall check

    def _write(self, qids, hashes, res, idx: list[int]) -> str | None:
        """Write the part of the encoded rows ``idx`` (positions in the call) that did not fail; its
        entry (JSON: name, rows, digests), told to the driver before the next part starts."""
        ok = [j for j, i in enumerate(idx) if res.errors[j] is None]
        if not ok:
            return None
        cols = {"query_id": pa.array([qids[idx[j]] for j in ok], pa.string()),
                "text_hash": pa.array([hashes[idx[j]] for j in ok], pa.string()),
                "n_tokens": pa.array(res.n_tokens[ok], pa.int32()),
                "truncated": pa.array(res.truncated[ok], pa.bool_())}
        for c in self.columns:
            cols[c] = schemas.encode_vectors(res.features[c][ok])
        table = pa.table(cols, schema=schemas.features_schema(self.columns, self.dim))
        name = part_name(cols["query_id"].to_pylist(), cols["text_hash"].to_pylist())
        self.storage.write_bytes(join(self.parts_uri, name), write_part(table))
        entry = json.dumps({"name": name, "rows": len(ok), "sha256": part_digests(table)})
        if self.progress is not None:
            rows = {qids[idx[j]]: (int(res.n_tokens[j]), bool(res.truncated[j])) for j in ok}
            self.ray.get(self.progress.add_part.remote(entry, rows))
        return entry

    def __call__(self, batch: pa.Table) -> pa.Table:
        # OpenMP's thread count is per calling thread, and Ray Data calls from another thread
        # than __init__'s: set it here, or matmuls run on one core (measured: 1.9x slower).
        self.torch.set_num_threads(self.threads)
        qids = batch.column("query_id").to_pylist()
        texts = batch.column("text").to_pylist()
        hashes = batch.column("text_hash").to_pylist()
        n = len(qids)
        self._refuse_if_halted()
        # Rows an earlier attempt at this block committed (its actor was lost): kept, not encoded again.
        done = self.ray.get(self.progress.committed.remote(qids)) if self.progress is not None else {}
        errors: list[str | None] = [None] * n
        n_tokens, truncated, parts = np.zeros(n, np.int32), np.zeros(n, bool), [None] * n
        for i, q in enumerate(qids):
            if q in done:
                n_tokens[i], truncated[i], parts[i] = done[q]
        todo = [i for i in range(n) if qids[i] not in done]
        stats, at = ExtractStats(), 0
        while at < len(todo):
            if at:
                self._refuse_if_halted()
            idx = todo[at : at + self.sizer.next_rows([len(texts[i]) for i in todo[at : at + self.cfg.rows_per_task]])]
            at += len(idx)
            t0 = time.perf_counter()
            res = self.encoder.extract([texts[i] for i in idx], self._tell if self.progress is not None else None)
            entry = self._write(qids, hashes, res, idx)
            self.sizer.observe(sum(len(texts[i]) for i in idx), time.perf_counter() - t0)
            stats.add(res.stats)
            for j, i in enumerate(idx):
                errors[i], n_tokens[i], truncated[i] = res.errors[j], res.n_tokens[j], res.truncated[j]
                parts[i] = entry if res.errors[j] is None else None
        return pa.table({
            "query_id": qids,
            "error": pa.array(errors, pa.string()),
            "n_tokens": n_tokens,
            "truncated": truncated,
            "part": pa.array(parts, pa.string()),  # the part that holds the row (JSON: name, rows, digests)
            # Per-call figures, repeated on each row; the driver reads them once per call.
            "call_id": [part_name(qids, hashes)] * n,
            "call_seconds": [stats.seconds] * n,
            "call_computed_tokens": [stats.computed_tokens] * n,
            "call_padded_slots": [stats.padded_slots] * n,
            "call_prefix_groups": [stats.prefix_groups] * n,
            "call_peak_rss_mb": [_peak_rss_mb()] * n,
        })


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_actor_pool(cfg: AppConfig, todo: pa.Table, identity: str, parts_uri: str, storage: Storage,
                   commit: Callable[[dict], None], memory_mb: float | None = None,
                   hook: Callable | None = None) -> pa.Table:
    """Encode ``todo`` (query_id, text, text_hash) over the actor pool, in Ray Data blocks of
    ``extract.rows_per_task``; ``commit(entries)`` is called, from the driver, with each batch of
    newly written parts (name -> rows, sha256) as they come. Returns every row's result. Each actor
    asks the scheduler for ``memory_mb``; rows, tokens/s and an ETA are shown meanwhile."""
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
                                   actors=ecfg.actors, progress=counter, quiet=not verbose(), hook=hook),
        batch_size=k,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=ecfg.actors),
        num_cpus=ecfg.actor_num_cpus,
        num_gpus=ecfg.actor_num_gpus or None,
        resources=ecfg.actor_resources or None,
        **({"memory": int(memory_mb * 2**20)} if memory_mb else {}),
    )
    # A block takes as long as it takes (rows_per_task queries on the slowest node); progress is
    # judged by the rows the actors report (extract.stall_timeout_s), not by blocks leaving Ray Data.
    out.context.execution_no_progress_timeout_s = -1
    lock = threading.Lock()

    def locked_commit(entries: dict) -> None:
        if entries:
            with lock:
                commit(entries)

    results = []
    watch = StallWatch(ray, counter, locked_commit, ecfg.stall_timeout_s)
    try:
        with watch, Progress("extract", todo.num_rows, lambda: ray.get(counter.read.remote(), timeout=10)):
            for batch in read_pool(out.iter_batches(batch_format="pyarrow", batch_size=None), watch):
                locked_commit(part_entries(set(batch.column("part").to_pylist())))
                results.append(batch)
    except Exception as e:  # noqa: BLE001 - an actor's user-facing error, as one line
        if watch.stalled:
            raise JobFailed(f"extract: no query finished on any actor for {ecfg.stall_timeout_s:.0f} s "
                            f"(extract.stall_timeout_s); the parts written so far are committed and a rerun "
                            f"resumes from them") from None
        err = user_error(e)
        if err is None or err is e:
            raise
        raise err from None
    finally:
        try:
            watch.take()  # parts reported after the last poll
        finally:
            ray.kill(counter)
    return pa.concat_tables(results)
