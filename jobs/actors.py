"""The Ray pieces: the encoder actor pool (Ray Data), the prediction tasks of ``route`` and the
Ray Train workers that fit SharedTrunkNet members. Each loads its model once per process: the
encoder in the actor's ``__init__``, the router on a worker's first prediction task."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from router_core import schemas
from router_core.config import AppConfig, ExtractConfig
from router_core.encoders import resolve_encoder
from router_core.errors import ArtifactError, TrainingFailed
from router_core.features import part_digests, part_name, verify_part, write_part
from router_core.model import TrainParams
from router_core.routers import RouterInputs, load_router, predict_any
from router_core.storage import Storage, is_s3, join

from .runtime import default_cache_dir, ensure_ray, user_error


# -- extraction ---------------------------------------------------------------------------------
class ExtractActor:
    """One encoder per actor, loaded once; each call encodes a block and writes its part file."""

    def __init__(self, ecfg: dict, cache_dir: str | None, identity: str, parts_uri: str, storage: dict,
                 threads: int | None, actors: int = 1):
        import torch

        from router_core.extraction import Encoder

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

    def __call__(self, batch: pa.Table) -> pa.Table:
        # OpenMP's thread count is per calling thread, and Ray Data calls from another thread
        # than __init__'s: set it here, or matmuls run on one core (measured: 1.9x slower).
        self.torch.set_num_threads(self.threads)
        qids = batch.column("query_id").to_pylist()
        texts = batch.column("text").to_pylist()
        hashes = batch.column("text_hash").to_pylist()
        res = self.encoder.extract(texts)
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
                   on_result=None) -> pa.Table:
    """Encode ``todo`` (query_id, text, text_hash) in blocks of ``extract.rows_per_task`` over the
    actor pool; ``on_result(batch)`` sees each finished call's rows. Returns every call's rows."""
    ray = ensure_ray(cfg)
    ecfg = cfg.extract
    k = ecfg.rows_per_task
    ds = ray.data.from_arrow([todo.slice(i, k) for i in range(0, todo.num_rows, k)])
    out = ds.map_batches(
        ExtractActor,
        fn_constructor_kwargs=dict(ecfg=ecfg.model_dump(), cache_dir=ecfg.cache_dir, identity=identity,
                                   parts_uri=parts_uri, storage=storage.settings(), threads=ecfg.torch_threads,
                                   actors=ecfg.actors),
        batch_size=k,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=ecfg.actors),
        num_cpus=ecfg.actor_num_cpus,
        num_gpus=ecfg.actor_num_gpus or None,
        resources=ecfg.actor_resources or None,
    )
    results = []
    try:
        for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
            if on_result is not None:
                on_result(batch)
            results.append(batch)
    except Exception as e:  # noqa: BLE001 - an actor's user-facing error, as one line
        err = user_error(e)
        if err is None or err is e:
            raise
        raise err from None
    return pa.concat_tables(results)


# -- prediction (route) ---------------------------------------------------------------------------
_ROUTERS: dict[tuple[str, str], object] = {}  # in each worker process: the router it last loaded


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


# -- training (Ray Train) -------------------------------------------------------------------------
def _worker_loop(config: dict) -> None:
    """Runs on every Ray Train worker: fit one net per seed on this worker's slice of each batch."""
    import ray
    import ray.train
    import ray.train.torch
    from safetensors.numpy import load_file, save_file

    from router_core.model import fit_trunk

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    x_tr, s_tr, x_va, s_va, *offsets = ray.get(config["data"])  # offsets (train, val): a residual net
    params = TrainParams(**config["params"])
    wrap = (lambda net: ray.train.torch.prepare_model(net)) if world > 1 else None
    losses, states = [], {}
    # A restarted worker group (a worker was lost) resumes after the last member checkpointed.
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            states = dict(load_file(str(Path(d) / "members.safetensors")))
            losses = json.loads((Path(d) / "losses.json").read_text())
    for seed in config["seeds"][len(losses):]:
        net, val, epochs = fit_trunk(x_tr, s_tr, x_va, s_va, params, seed, rank, world, wrap, *offsets)
        losses.append(val)
        for k, v in net.state_dict().items():
            states[f"seed{seed}.{k}"] = v.detach().cpu().numpy()
        metrics = {"val_loss": float(np.min(losses)), "val_losses": json.dumps(losses), "members": len(losses)}
        if rank == 0:  # one checkpoint per finished member: the members so far and their losses
            with tempfile.TemporaryDirectory() as d:
                save_file(states, str(Path(d) / "members.safetensors"))
                (Path(d) / "losses.json").write_text(json.dumps(losses))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)


def ray_train_fit(cfg: AppConfig, storage: Storage):
    """The data-parallel fit that router_core.training takes: ``fit(data, params, seeds, name) ->
    (metrics, member states)``, each call one ``TorchTrainer.fit`` over ``train.num_workers`` workers."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    tc = cfg.train
    ensure_ray(cfg)

    def fit(data: tuple, params: TrainParams, seeds: list[int], name: str) -> tuple[dict, dict]:
        with tempfile.TemporaryDirectory() as tmp:
            store, fs = tc.storage_path or tmp, None
            if is_s3(store):  # through our S3 settings (endpoint, region), as every other read
                store, fs = store[len("s3://"):], storage.s3_filesystem()
            trainer = TorchTrainer(
                _worker_loop,
                train_loop_config={"data": ray.put(data), "params": params.__dict__, "seeds": seeds},
                torch_config=TorchConfig(timeout_s=tc.collective_timeout_s),  # a lost peer fails the step
                scaling_config=ray.train.ScalingConfig(
                    num_workers=tc.num_workers, use_gpu=tc.use_gpu,
                    resources_per_worker={"CPU": tc.cpus_per_worker, **tc.worker_resources}),
                run_config=ray.train.RunConfig(storage_path=store, storage_filesystem=fs, name=f"trunk-{name}",
                                               failure_config=ray.train.FailureConfig(max_failures=tc.max_failures)),
            )
            try:
                result = trainer.fit()
                error = result.error
            except Exception as e:  # noqa: BLE001 - Ray Train raises its TrainingFailedError here
                error = e
            if error is not None:
                raise TrainingFailed(f"training {name} failed after {tc.max_failures} restart(s) of its workers "
                                     f"({_first_line(error)}); no model was written") from None
            from safetensors.numpy import load_file

            with result.checkpoint.as_directory() as d:
                states = load_file(str(Path(d) / "members.safetensors"))
                losses = json.loads((Path(d) / "losses.json").read_text())
            if len(losses) != len(seeds):
                raise TrainingFailed(f"training {name} ended with {len(losses)} of {len(seeds)} members; "
                                     "no model was written")
            return dict(result.metrics, val_losses=json.dumps(losses)), states

    return fit


def _first_line(e: BaseException) -> str:
    lines = [x for x in str(e).strip().splitlines() if x.strip()]
    return (lines[-1] if lines else type(e).__name__)[:300]
