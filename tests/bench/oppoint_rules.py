"""Operating-point rules replayed over every study run already trained, from recorded arrays, without a
refit: issue 47's question of which rule keeps the promise on the test split, and what it saves.

    .venv/bin/python -m tests.bench.oppoint_rules [--cache ~/.cache/prefill-router/study] [--out FILE]

Each run's served router's probabilities, scores and costs (validation, test and the out-of-fold
training rows) are computed once by tests/bench/replay_oppoint.py:recorded and kept beside its model
(replay.npz), so this takes seconds once they are there. Every rule chooses tau on the out-of-fold rows
plus validation (``measured``; ``expected``: on validation, the old rule) and is judged on test. A
promise for a batch (``batch``, train.promise_batch) is made for the test split's own size: the test
split is the batch routed. ``+fallback``: where even tau 0 may break the promise, the best single
serves (train.fallback_best_single).

Prints one Markdown table (per rule: runs, kept, interval held, median test saving, median and worst
test change, the 600-query variants apart) and writes one JSON row per (run, rule) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from router_core.selection import OperatingRule, point_on

from .replay_oppoint import judged, recorded, rows_for
from .study_rows import POOLS, prepare

TOLERANCE = 0.005
# (name, rule, rows chosen on, guard z, promise for a batch of the test's size, best single as fallback)
RULES = (("expected (old)", "expected", "val", 1.645, False, False),
         ("measured, z 1.645 (default)", "measured", "oof+val", 1.645, False, False),
         ("measured, z 1.645 +fallback", "measured", "oof+val", 1.645, False, True),
         ("measured, z 2.326", "measured", "oof+val", 2.326, False, False),
         ("measured, batch, z 1.0", "measured", "oof+val", 1.0, True, False),
         ("measured, batch, z 1.645", "measured", "oof+val", 1.645, True, False),
         ("measured, batch, z 1.645 +fallback", "measured", "oof+val", 1.645, True, True),
         ("measured, batch, z 2.326 +fallback", "measured", "oof+val", 2.326, True, True))


def runs(cache: Path) -> list[tuple[str, str, int, Path]]:
    """(pool, variant, seed, model folder) of every run trained under ``cache``."""
    out = []
    for pool in POOLS:
        for m in sorted((cache / pool).glob("*/seed*/model/manifest.json")):
            model = m.parent
            out.append((pool, model.parent.parent.name, int(model.parent.name[4:]), model))
    return out


def one(rec: dict, rule: str, on: str, z: float, batch: bool, fallback: bool) -> dict:
    p, s, c, rows = rows_for(rec, on)
    op = point_on(p, s, c, int(rec["best"]), rows, OperatingRule(rule, TOLERANCE, z, len(rec["s_te"]) if batch else None))
    out = judged(rec, op, TOLERANCE)
    if fallback and op.get("fallback") == "best single":
        out.update(test_change_points=0.0, test_saving_pct=0.0, kept=True, interval_held=True)
    return out


def table(rows: list[dict]) -> str:
    out = ["| rule | variant | runs | kept | interval held | test saving (median) | test change (median, worst) |",
           "|---|---|---|---|---|---|---|"]
    for name, *_ in RULES:
        for part, keep in (("all", lambda v: True), ("n600", lambda v: v == "n600")):
            got = [r for r in rows if r["rule"] == name and keep(r["variant"])]
            if got:
                ch = [r["test_change_points"] for r in got]
                out.append(f"| {name} | {part} | {len(got)} | {sum(r['kept'] for r in got)} | "
                           f"{sum(r['interval_held'] for r in got)} | "
                           f"{np.median([r['test_saving_pct'] for r in got]):.1f}% | {np.median(ch):+.2f}, {min(ch):+.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/prefill-router/study")
    ap.add_argument("--out", type=Path, help="write one JSON row per (run, rule) here")
    a = ap.parse_args(argv)
    rows, prepared = [], {}
    for pool, variant, seed, model in runs(a.cache):
        if not (model.parent / "replay.npz").exists() and pool not in prepared:
            prepared[pool] = prepare(pool, a.cache)
        data, feats = prepared.get(pool, ({variant: ""}, ""))
        rec = recorded(data[variant], feats, str(model))
        for name, rule, on, z, batch, fallback in RULES:
            rows.append({"pool": pool, "variant": variant, "seed": seed, "rule": name,
                         **one(rec, rule, on, z, batch, fallback)})
    if a.out:
        a.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len({(r['pool'], r['variant'], r['seed']) for r in rows})} runs")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
