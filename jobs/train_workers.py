"""Ray Train workers that fit SharedTrunkNet members, and the data-parallel ``fit`` that
router_core.training takes (one ``TorchTrainer.fit`` per call)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from router_core.config import AppConfig
from router_core.errors import TrainingFailed
from router_core.model import TrainParams
from router_core.storage import Storage, is_s3

from .runtime import ensure_ray


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
        if rank == 0 and len(config["seeds"]) > 1:  # members as they finish (a trial is one member)
            print(f"train {config.get('name', '')}: member {len(losses)}/{len(config['seeds'])} "
                  f"val_loss {val:.4f} ({epochs} epochs)", flush=True)
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
                train_loop_config={"data": ray.put(data), "params": params.__dict__, "seeds": seeds, "name": name},
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
