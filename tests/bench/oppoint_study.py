"""Issue 47's study of operating-point rules, over the runs of the choice study (tests/bench/study_rows.py:
3 pools x 3 variants x 3 seeds), sized to a session's clock: one JSON row per (pool, variant, seed),
appended as each run ends; rows already in the file are skipped.

    nohup .venv/bin/python -m tests.bench.oppoint_study --rows docs/oppoint-study.jsonl --budget-min 30 \\
        > out/oppoint.log 2>&1 &
    python -m tests.bench.oppoint_study --rows docs/oppoint-study.jsonl --table   # the Markdown table

Each run is trained and evaluated as study_rows does (its model kept under ``--cache``; a model already
there is reused, not refitted), then every operating-point rule is replayed on it
(tests/bench/replay_oppoint.py: tau chosen on validation or on the out-of-fold rows plus validation,
judged on test). A row: pool, variant, seed, the commit, and per rule the promise, the test figures,
whether the promise was kept and whether the batch interval held the test change.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from .replay_oppoint import replay
from .study_rows import append_row, budget_left, prepare, run_one, study_args, study_todo


def rule_name(r: dict) -> str:
    """A rule's name in the table: what it chose on, and its guard."""
    on = "oof+val" if "out_of_fold" in r["rows"] else "val"
    z = "point" if r["guard_z"] is None else f"z {r['guard_z']:g}"
    return f"{r['rule']} on {on}, {z}"


def with_fallback(r: dict) -> dict:
    """Rule ``r`` under train.fallback_best_single: where even its tau 0 may break the promise
    (fallback "best single"), the best single serves, so on test nothing is saved and nothing lost."""
    out = dict(r, rule=r["rule"] + " +fallback")
    if r["rule"] == "measured" and r.get("fallback") == "best single":
        out.update(test_change_points=0.0, test_saving_pct=0.0, kept=True, interval_held=True)
    return out


def table(rows: list[dict]) -> str:
    """Per rule (and each measured rule with train.fallback_best_single), over the rows' runs, the
    600-query variants apart: runs, promise kept, interval held, the median test saving and the
    median and worst test change (points)."""
    out = ["| rule | runs | variant | kept | interval held | test saving (median) | test change (median, worst) |",
           "|---|---|---|---|---|---|---|"]
    rows = [dict(row, rules=row["rules"] + [with_fallback(r) for r in row["rules"] if r["rule"] == "measured"])
            for row in rows]
    names = list(dict.fromkeys(rule_name(r) for row in rows for r in row["rules"]))
    for name in names:
        for part, keep in (("all", lambda v: True), ("n600", lambda v: v == "n600")):
            got = [r for row in rows if keep(row["variant"]) for r in row["rules"] if rule_name(r) == name]
            if not got:
                continue
            ch = [r["test_change_points"] for r in got]
            out.append(f"| {name} | {len(got)} | {part} | {sum(r['kept'] for r in got)} | "
                       f"{sum(r['interval_held'] for r in got)} | "
                       f"{np.median([r['test_saving_pct'] for r in got]):.1f}% | "
                       f"{np.median(ch):+.2f}, {min(ch):+.2f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    study_args(ap)
    ap.add_argument("--table", action="store_true", help="print the rows already written as a Markdown table; run nothing")
    a = ap.parse_args(argv)
    if a.table:
        print(table([json.loads(line) for line in a.rows.read_text().splitlines() if line.strip()]))
        return 0
    from jobs.runtime import code_version

    t0, spent = time.monotonic(), []
    prepared: dict[str, tuple] = {}
    for seed, pool, variant in study_todo(ap, a, "oppoint_study"):
        if budget_left(t0, spent, a.budget_min) is None:
            print(f"oppoint_study: budget reached; stopping before {pool} {variant} seed {seed}", flush=True)
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
        append_row(a.rows, {"pool": pool, "variant": variant, "seed": seed, "commit": code_version(), "rules": rules})
        print(f"oppoint_study: {pool} {variant} seed {seed} ({spent[-1]:.0f} s): " + "; ".join(
            f"{r['rule']} z {r['guard_z']} on {'+'.join(r['rows'])}: {r['test_saving_pct']:.1f}% at "
            f"{r['test_change_points']:+.2f}{'' if r['kept'] else ' BROKEN'}" for r in rules), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
