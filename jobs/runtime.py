"""Starting or joining Ray, and facts about the running code."""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import time
from pathlib import Path

import router_core
from router_core.config import AppConfig
from router_core.errors import RouterError

log = logging.getLogger(__name__)


def ensure_ray(cfg: AppConfig):
    """Join the cluster at ``ray.address`` / ``RAY_ADDRESS``, or start a local Ray on loopback."""
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if not address:  # a local Ray: single-node mode keeps every socket on 127.0.0.1 (read at import)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Joining a cluster: Ray's multi-node mode, so this driver is reachable from the other nodes.
    import ray

    if ray.is_initialized():
        return ray
    if not verbose():  # Ray 2.60's notice that a local cluster has token auth on (its default): nothing is wrong
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # The workers' own lines (Ray Train's controller and workers, model loads) stay in Ray's logs
    # unless -v: the stages print progress, and errors come back as exceptions.
    if address:
        ray.init(address=address, log_to_driver=verbose())
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 configure_logging=False, log_to_driver=verbose())
    log.info("ray: %s%s", ray.cluster_resources(), "" if verbose() else
             f"; workers' logs under {_session_logs(ray)} (-v to show them here)")
    return ray


def _session_logs(ray) -> str:
    try:
        return ray._private.worker._global_node.get_logs_dir_path()
    except AttributeError:  # a Ray whose internals moved: the usual place
        return "/tmp/ray/session_latest/logs"


def user_error(e: BaseException) -> RouterError | None:
    """The user-facing error (bad input, unreachable storage) behind an exception that crossed a Ray
    task or actor boundary, so the CLI can print it as one line instead of a remote traceback."""
    chain = []
    while e is not None and len(chain) < 10:  # Ray wraps a task's exception (.cause); Ray Data wraps again
        chain.append(e)
        e = getattr(e, "cause", None) or e.__cause__
    return next((x for x in reversed(chain) if isinstance(x, RouterError)), None)  # the innermost: the original


def ray_get(ref):
    """``ray.get`` that re-raises a task's user-facing error as itself."""
    import ray

    try:
        return ray.get(ref)
    except Exception as e:  # noqa: BLE001 - re-raised unchanged unless it carries a RouterError
        err = user_error(e)
        if err is None or err is e:
            raise
        raise err from None


def default_cache_dir() -> str:
    return os.environ.get("PREFILL_ROUTER_CACHE") or str(Path.home() / ".cache" / "prefill-router")


def code_version() -> str:
    """Package version plus the git commit of the checkout, when there is one."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{router_core.__version__}+{sha}" if sha else router_core.__version__


def concrete_extract(cfg):
    """``cfg`` with ``extract.dtype: auto`` made concrete for this machine (the driver's CPU stands for
    CPU nodes; ``extract.device: cuda`` means bfloat16): the features' identity needs the real dtype,
    and the extraction core refuses ``auto``. Called once per run; the value travels in the config."""
    from router_core.encoders import choose_dtype

    ec = cfg.extract
    probe = ec.dtype == "auto" and not ec.device.startswith("cuda")  # only a CPU's auto needs the timing
    dtype = choose_dtype(ec.dtype, ec.device, bf16_fast=probe and cpu_bf16_is_fast())
    return cfg if dtype == ec.dtype else cfg.model_copy(update={"extract": ec.model_copy(update={"dtype": dtype})})


@functools.lru_cache(maxsize=1)
def cpu_bf16_is_fast() -> bool:
    """Whether torch runs a bfloat16 matmul on this CPU about as fast as a float32 one: the CPU has
    native bfloat16 (``NATIVE_BF16_FLAGS``) and a 256-wide matmul, timed on one thread (best of 5), is
    within 2x of float32's. Natively bfloat16 takes 0.2-0.6x float32's time; emulated (an AVX2-only
    CPU, or one capped by ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA) 25-35x, so the bar holds under
    load (one thread: no waiting on a descheduled twin). About 0.1 s at most, once per process."""
    from router_core.encoders import NATIVE_BF16_FLAGS, this_cpu_flags

    if not NATIVE_BF16_FLAGS & this_cpu_flags():
        return False
    import torch

    def best(dtype) -> float:
        a = torch.randn(256, 256).to(dtype)
        a @ a  # the first call picks and packs the kernel
        times = []
        for _ in range(5):
            t = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - t)
        return min(times)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        f32, bf16 = best(torch.float32), best(torch.bfloat16)
    finally:
        torch.set_num_threads(threads)
    log.info("extract.dtype auto: a 256-wide matmul on one thread takes %.2f ms in float32, %.2f ms in bfloat16",
             f32 * 1e3, bf16 * 1e3)
    return bf16 <= 2 * f32


def verbose() -> bool:
    """Debug logging was asked for (``-v``): libraries may then print their own progress."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def quiet_model_loading() -> None:
    """transformers' per-load bars ("Loading weights", "Writing model shards") off: a stage prints
    its own progress. Called in each actor that loads a model, unless ``-v``; the CLI keeps the
    driver's off through HF_HUB_DISABLE_PROGRESS_BARS (set before transformers is imported)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def quiet_ray_data(ray) -> None:
    """Ray Data's block progress bars and execution logs off unless debug logging was asked for
    (``-v``): the stage prints progress in rows and tokens (jobs.progress)."""
    if verbose():
        return
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Its one warning there says the bars are off, which is this function's choice.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
