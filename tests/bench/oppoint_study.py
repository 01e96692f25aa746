"""Issue 47's study of operating-point rules, over the runs of the choice study (tests/bench/study_rows.py:
3 pools x 3 variants x 3 seeds), sized to a session's clock: one JSON row per (pool, variant, seed),
appended as each run ends; rows already in the file are skipped.

    nohup .venv/bin/python -m tests.bench.oppoint_study --rows docs/oppoint-study.jsonl --budget-min 30 \\
        > out/oppoint.log 2>&1 &

Each run is trained and evaluated as study_rows does (its model kept under ``--cache``; a model already
there is reused, not refitted), then every operating-point rule is replayed on it
(tests/bench/replay_oppoint.py: tau chosen on validation or on the out-of-fold rows plus validation,
judged on test). A row: pool, variant, seed, the commit, and per rule the promise, the test figures,
whether the promise was kept and whether the batch interval held the test change.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .replay_oppoint import replay
from .study_rows import POOLS, VARIANTS, done_keys, prepare, run_one


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=Path, required=True, help="JSON-lines file the rows are appended to")
    ap.add_argument("--budget-min", type=float, default=30.0,
                    help="start no run once this many minutes have passed, or when the median run so far would "
                         "not end within them")
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "prefill-router" / "study")
    ap.add_argument("--pools", default="rb,lr,rl", help="comma-separated, of " + ", ".join(POOLS))
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of " + ", ".join(VARIANTS))
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args(argv)
    from jobs.runtime import code_version

    pools, variants = a.pools.split(","), a.variants.split(",")
    bad = [p for p in pools if p not in POOLS] + [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown pool or variant: {', '.join(bad)}")
    t0, spent = time.monotonic(), []
    done = done_keys(a.rows, who="oppoint_study")
    todo = [(s, p, v) for s in range(a.seeds) for p in pools for v in variants if (p, v, s) not in done]
    print(f"oppoint_study: {len(done)} rows in {a.rows}, {len(todo)} to run, budget {a.budget_min:.0f} min", flush=True)
    prepared: dict[str, tuple] = {}
    for seed, pool, variant in todo:
        left = a.budget_min * 60 - (time.monotonic() - t0)
        if left <= 0 or (spent and float(np.median(spent)) > left):
            print(f"oppoint_study: budget reached, {left / 60:.1f} min left; stopping before {pool} {variant} "
                  f"seed {seed}", flush=True)
            break
        if pool not in prepared:
            prepared[pool] = prepare(pool, a.cache)
        data, feats = prepared[pool]
        t = time.monotonic()
        model = a.cache / pool / variant / f"seed{seed}" / "model"
        if not (model / "manifest.json").exists():
            run_one(pool, variant, seed, data[variant], feats, a.cache, [])
        rules = replay(data[variant], feats, str(model))
        spent.append(time.monotonic() - t)
        row = {"pool": pool, "variant": variant, "seed": seed, "commit": code_version(), "rules": rules}
        a.rows.parent.mkdir(parents=True, exist_ok=True)
        with a.rows.open("a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        print(f"oppoint_study: {pool} {variant} seed {seed} ({spent[-1]:.0f} s): " + "; ".join(
            f"{r['rule']} z {r['guard_z']} on {'+'.join(r['rows'])}: {r['test_saving_pct']:.1f}% at "
            f"{r['test_change_points']:+.2f}{'' if r['kept'] else ' BROKEN'}" for r in rules), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
