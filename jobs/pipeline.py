"""Stage ``pipeline``: the main job end to end, on one output folder.

import -> validate -> extract -> select-layers -> train -> evaluate -> route the test split
(``pipeline.until`` stops after an earlier stage).
Every stage is the one its own subcommand runs, so a rerun reuses what is done (the feature cache
encodes nothing twice) and the outputs are the same as running the stages one by one.
"""

from __future__ import annotations

import json
import logging
import os
import time

import pyarrow as pa

from router_core.config import AppConfig
from router_core.dataset import load_dataset
from router_core.errors import DataError
from router_core.storage import join

from .common import storage_from

log = logging.getLogger(__name__)


class _Stop(Exception):
    """The stage named by ``pipeline.until`` has run."""


def run_pipeline(cfg: AppConfig) -> dict:
    from . import data, evaluate, extract, route, select_layers, train

    pc = cfg.pipeline
    out = pc.out
    paths = {k: join(out, k) for k in ("data", "features", "layers", "model", "report", "routes")}
    seconds: dict[str, float] = {}

    def stage(name: str, fn, show, *args):
        print(f"== {name}", flush=True)
        t = time.perf_counter()
        run = fn(*args)
        seconds[name] = time.perf_counter() - t
        show(run)
        if name == pc.until:
            raise _Stop
        return run

    try:
        stage("import", data.run_import, data.print_import, cfg, pc.format, pc.source, paths["data"], pc.pool,
              pc.candidates)
        stage("validate", data.run_validate, data.print_validate, cfg, paths["data"], None)
        stage("extract", extract.run_extract, extract.print_extract, cfg, paths["data"], paths["features"])
        stage("select-layers", select_layers.run_select_layers, select_layers.print_select, cfg, paths["data"],
              paths["features"], paths["layers"])
        tr = stage("train", train.run_train, train.print_train, cfg, paths["data"], paths["features"], paths["model"])
        ev = stage("evaluate", evaluate.run_evaluate, evaluate.print_evaluate, cfg, paths["data"], paths["features"],
                   paths["model"], paths["report"])
    except _Stop:
        print(f"== stopped after {pc.until} (pipeline.until) in " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
        return {"seconds": seconds, "paths": paths}

    storage = storage_from(cfg)
    q = load_dataset(storage, paths["data"]).queries
    test = q.filter(pa.array([s == pc.route_split for s in q.column("split").to_pylist()]))
    if not test.num_rows:
        raise DataError(f"{paths['data']}: no queries with split {pc.route_split!r} to route")
    queries_uri = join(out, f"{pc.route_split}_queries.parquet")
    storage.write_table(test, queries_uri)
    # The routes of an earlier pipeline run under OUT came from the model this run has just replaced,
    # as the report did: they are replaced too, so the demo can be run again (route alone refuses).
    if storage.exists(paths["routes"]):
        log.info("pipeline: replacing an earlier run's routes under %s", paths["routes"])
        storage.delete(paths["routes"])
    rt = stage("route", route.run_route, route.print_route, cfg, queries_uri, paths["model"], paths["routes"], pc.policy)
    b, op = rt.tally["always_best_single"], ev.report.get("operating_point")
    served = rt.tally.get("router", tr.index.serve)
    head = f"== {rt.routed} {pc.route_split} queries routed with {served}: "
    measured = bool(op and pc.route_split == "test" and rt.policy.get("tau") == op["tau"])
    pr = rt.tally.get("promise")
    if measured:
        # evaluate measured this operating point on the same queries with their observed costs;
        # route's tally prices calls from prompt lengths and median output tokens (an estimate).
        promised = (f"; train promised {pr['accuracy_change_points']:+.2f} points, 95% interval "
                    f"{pr['interval_points'][0]:+.2f} to {pr['interval_points'][1]:+.2f} for a batch of this size"
                    if pr else "")
        line = (head + f"{op['saving_pct']:.1f}% cheaper than always calling {b['model']} at accuracy "
                f"{op['accuracy']:.4f} vs {op['reference_accuracy']:.4f} ({op['accuracy_change_points']:+.2f} points), "
                f"measured on the test split with observed costs (route's tally, on estimated costs: "
                f"{b['saving_pct']:.1f}%{promised})")
    else:
        line = head + f"{b['saving_pct']:.1f}% cheaper than always calling {b['model']} (estimated costs)"
    print(line)
    total = sum(seconds.values())
    print("== done in " + f"{total:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ")")
    summary = {"last_line": line, "seconds": {**{k: round(v, 1) for k, v in seconds.items()}, "total": round(total, 1)},
               "served": served, "best_single": b["model"], "queries": rt.routed,
               "test_p_auccc": ev.report["routers"].get(served, {}).get("p_auccc"),
               "estimated_saving_pct": b["saving_pct"], "promise": pr,
               "test": ({k: op[k] for k in ("saving_pct", "accuracy", "reference_accuracy", "accuracy_change_points")}
                        if measured else None)}
    storage.write_text(join(out, "summary.json"), json.dumps(dict(summary, **run_facts(cfg, paths["features"])),
                                                              indent=2))
    print(f"report: {join(paths['report'], 'report.html')} (and report.json)")
    print(f"routes: {join(paths['routes'], 'routes')}/ with tally.json; figures: {join(out, 'summary.json')}")
    return {"seconds": seconds, "paths": paths, "summary": summary}


def run_facts(cfg: AppConfig, features: str) -> dict:
    """Where a run's figures come from: the date, the code, the machine and the dtype it encoded in."""
    import datetime as dt
    import platform

    from router_core.encoders import this_cpu_flags

    from .runtime import code_version

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    flags = this_cpu_flags()
    fm = json.loads(storage_from(cfg).read_text(join(features, "manifest.json")))
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"), "code": code_version(),
            "machine": {"cpu": cpu, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
                        "amx_bf16": "amx_bf16" in flags},
            "dtype": fm["settings"]["dtype"], "encoder": fm["encoder"]["spec"]}
