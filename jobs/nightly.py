"""``nightly``: route every query set that appeared under an input prefix since the last success.

A query set is one child of ``nightly.input``: a Parquet file, or a folder of Parquet parts. The
watermark object (``nightly.watermark``, default ``OUTPUT/_watermark.json``) lists the sets already
routed; each new set is routed into ``OUTPUT/<date>/<set>/`` with run id ``<date>-<set>``, and the
watermark gains that set only once its outputs are complete (``run.json`` written last with status
complete). A night that crashes leaves the watermark without the unfinished set, so the next night
routes it again into its own dated folder; nothing partial is ever taken for done.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field

from router_core.artifacts import read_json
from router_core.config import AppConfig
from router_core.errors import ConfigError
from router_core.model_index import resolve_model
from router_core.storage import Storage, join

from .common import storage_from

log = logging.getLogger(__name__)


@dataclass
class NightlyRun:
    date: str
    found: list[str]
    routed: dict[str, dict] = field(default_factory=dict)  # set -> {out, routed, rejected, cost}
    skipped: list[str] = field(default_factory=list)  # already under the watermark
    model: str = ""  # the model folder every set of this night was routed with (a retrain folder's champion)


def query_sets(storage: Storage, prefix: str) -> list[str]:
    """Names of the children of ``prefix`` that hold Parquet (files or folders), sorted."""
    names = set()
    for f in storage.list_files(prefix, ".parquet"):
        rel = f[len(prefix.rstrip("/")) + 1:]
        names.add(rel.split("/", 1)[0])
    return sorted(names)


WATERMARK = "_watermark.json"  # under nightly.output, unless nightly.watermark names another object


def watermark_uri(cfg: AppConfig) -> str:
    return cfg.nightly.watermark or join(cfg.nightly.output, WATERMARK)


def read_watermark(storage: Storage, uri: str) -> dict:
    return read_json(storage, uri) if storage.exists(uri) else {"done": {}, "last_success_unix": None}


def run_nightly(cfg: AppConfig, date: str | None = None) -> NightlyRun:
    from .route import run_route

    nc = cfg.nightly
    if not nc.input or not nc.output or not nc.model:
        raise ConfigError("nightly: set nightly.input, nightly.output and nightly.model (see configs/cluster.yaml)")
    storage = storage_from(cfg)
    day = date or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    wm_uri = watermark_uri(cfg)
    wm = read_watermark(storage, wm_uri)
    found = query_sets(storage, nc.input)
    model = resolve_model(storage, nc.model)  # one champion for the whole night, even if retrain promotes meanwhile
    run = NightlyRun(day, found, model=model)
    policy = nc.policy
    for name in found:
        if name in wm["done"]:
            run.skipped.append(name)
            continue
        out = join(nc.output, day, name.removesuffix(".parquet"))
        r = run_route(cfg, join(nc.input, name), model, out, policy, run_id=f"{day}-{name.removesuffix('.parquet')}")
        run.routed[name] = {"out": out, "routed": r.routed, "rejected": r.rejected,
                            "cost_usd": r.tally["total_cost_usd"], "run_id": r.run_id}
        wm["done"][name] = {"date": day, "out": out, "run_id": r.run_id, "model": model,
                            "finished_unix": int(time.time())}
        wm["last_success_unix"] = int(time.time())
        storage.write_text(wm_uri, json.dumps(wm, indent=2))  # only now is this set done
        log.info("nightly: %s routed into %s", name, out)
    return run


def print_nightly(run: NightlyRun) -> None:
    print(f"nightly {run.date}: {len(run.found)} query sets found, {len(run.routed)} routed, "
          f"{len(run.skipped)} already done" + (f", with {run.model}" if run.routed else ""))
    for name, r in run.routed.items():
        print(f"  {name}: {r['routed']} routed, {r['rejected']} rejected, est. ${r['cost_usd']:.4f} -> {r['out']}")
