"""Starting or joining Ray, and facts about the running code."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import router_core
from router_core.config import AppConfig

log = logging.getLogger(__name__)


def ensure_ray(cfg: AppConfig):
    """Join the cluster at ``ray.address`` / ``RAY_ADDRESS``, or start a local Ray on loopback."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep sockets on 127.0.0.1
    import ray

    if ray.is_initialized():
        return ray
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 configure_logging=False)
    log.info("ray: %s", ray.cluster_resources())
    return ray


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
