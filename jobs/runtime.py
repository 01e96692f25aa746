"""Starting or joining Ray, and facts about the running code."""

from __future__ import annotations

import logging
import os
import subprocess
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
    CPU nodes; ``extract.device: cuda`` means bfloat16): the features' identity needs the real dtype."""
    from router_core.encoders import choose_dtype

    dtype = choose_dtype(cfg.extract.dtype, cfg.extract.device)
    return cfg if dtype == cfg.extract.dtype else cfg.model_copy(update={"extract": cfg.extract.model_copy(update={"dtype": dtype})})


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
