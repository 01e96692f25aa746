"""Operating-point rules replayed over every study run already trained, from recorded arrays, without a
refit: issue 47's question of which rule keeps the promise on the test split, and what it saves.

    .venv/bin/python -m tests.bench.oppoint_rules [--cache ~/.cache/prefill-router/study] [--rows FILE]

Each run's served router's probabilities, scores and costs (validation, test and the out-of-fold
training rows) are computed once by tests/bench/replay_oppoint.py:recorded and kept beside its model
(replay.npz), so this takes seconds once they are there. Every rule chooses tau on the out-of-fold rows
plus validation (``measured``; ``expected``: on validation, the old rule) and is judged on test. A
promise for a batch (train.promise_batch) is made for 1000 queries, the default, or for the test
split's own size (the test split is the batch routed). ``+fallback``: where even tau 0 may break the promise, the best single
serves (train.fallback_best_single).

Prints one Markdown table (per rule: runs, kept, interval held, median test saving, median and worst
test change, the 600-query variants apart) and writes one JSON row per run to ``--rows`` (the
format of tests/bench/oppoint_study.py's rows, which trains the runs not yet there).
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
# (name, rule, rows chosen on, guard z, the batch promised for (None: the mean; "test": the test split's
# size), best single as fallback). The default: train.promise_batch 1000 with train.fallback_best_single.
RULES = (("expected, validation alone (the old rule)", "expected", "val", 1.645, None, False),
         ("measured, mean bound", "measured", "oof+val", 1.645, None, False),
         ("measured, mean bound +fallback", "measured", "oof+val", 1.645, None, True),
         ("measured, batch 1000", "measured", "oof+val", 1.645, 1000, False),
         ("measured, batch 1000 +fallback (default)", "measured", "oof+val", 1.645, 1000, True),
         ("measured, batch of the test's size +fallback", "measured", "oof+val", 1.645, "test", True))


def runs(cache: Path) -> list[tuple[str, str, int, Path]]:
    """(pool, variant, seed, model folder) of every run trained under ``cache``."""
    out = []
    for pool in POOLS:
        for m in sorted((cache / pool).glob("*/seed*/model/manifest.json")):
            model = m.parent
            out.append((pool, model.parent.parent.name, int(model.parent.name[4:]), model))
    return out


def one(rec: dict, rule: str, on: str, z: float, batch: int | str | None, fallback: bool) -> dict:
    p, s, c, rows = rows_for(rec, on)
    b = len(rec["s_te"]) if batch == "test" else batch
    op = point_on(p, s, c, int(rec["best"]), rows, OperatingRule(rule, TOLERANCE, z, b))
    out = judged(rec, op, TOLERANCE)
    if fallback and op.get("fallback") == "best single":
        out.update(test_change_points=0.0, test_saving_pct=0.0, kept=True, interval_held=True)
    return out


def rules_of(rec: dict[str, np.ndarray]) -> list[dict]:
    """Every rule of RULES on one run's recorded arrays, judged on its test split."""
    return [{"rule": name, **one(rec, rule, on, z, batch, fallback)} for name, rule, on, z, batch, fallback in RULES]


def table(rows: list[dict]) -> str:
    """Per rule, over the runs' rows (pool, variant, seed, rules), the 600-query variants apart: runs,
    promise kept, interval held, the median test saving (over all runs and per pool), and the median
    and worst test change (points)."""
    flat = [dict(r, pool=row["pool"], variant=row["variant"]) for row in rows for r in row["rules"]]
    out = ["| rule | variant | runs | kept | interval held | test saving (median) | by pool (rb, lr, rl) | "
           "test change (median, worst) |", "|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["rule"] for r in flat):
        for part, keep in (("all", lambda v: True), ("n600", lambda v: v == "n600")):
            got = [r for r in flat if r["rule"] == name and keep(r["variant"])]
            if got:
                ch = [r["test_change_points"] for r in got]
                pools = ", ".join(f"{np.median(v):.1f}%" if (v := [r["test_saving_pct"] for r in got if r["pool"] == p])
                                  else "-" for p in POOLS)
                out.append(f"| {name} | {part} | {len(got)} | {sum(r['kept'] for r in got)} | "
                           f"{sum(r['interval_held'] for r in got)} | "
                           f"{np.median([r['test_saving_pct'] for r in got]):.1f}% | {pools} | "
                           f"{np.median(ch):+.2f}, {min(ch):+.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache/prefill-router/study")
    ap.add_argument("--rows", type=Path, help="write one JSON row per run (pool, variant, seed, rules) here")
    a = ap.parse_args(argv)
    from jobs.runtime import code_version

    rows, prepared = [], {}
    for pool, variant, seed, model in runs(a.cache):
        if not (model.parent / "replay.npz").exists() and pool not in prepared:
            prepared[pool] = prepare(pool, a.cache)
        data, feats = prepared.get(pool, ({variant: ""}, ""))
        rec = recorded(data[variant], feats, str(model))
        rows.append({"pool": pool, "variant": variant, "seed": seed, "commit": code_version(), "rules": rules_of(rec)})
    if a.rows:
        a.rows.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} runs")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
