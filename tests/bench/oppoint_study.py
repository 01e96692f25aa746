"""Issue 47's study of operating-point rules, over the runs of the choice study (tests/bench/study_rows.py:
3 pools x 3 variants x 3 seeds), sized to a session's clock: one JSON row per (pool, variant, seed),
appended as each run ends; rows already in the file are skipped.

    nohup .venv/bin/python -m tests.bench.oppoint_study --rows docs/oppoint-study.jsonl --budget-min 30 \\
        > out/oppoint.log 2>&1 &
    python -m tests.bench.oppoint_study --rows docs/oppoint-study.jsonl --table   # the Markdown table

Each run is trained and evaluated as study_rows does (its model kept under ``--cache``; a model already
there is reused, not refitted), its served router's probabilities recorded beside it
(tests/bench/replay_oppoint.py:recorded), then every operating-point rule of
tests/bench/oppoint_rules.py is replayed on it (tau chosen on validation or on the out-of-fold rows
plus validation, judged on test). A row: pool, variant, seed, the commit, and per rule the promise,
the test figures, whether the promise was kept and whether the batch interval held the test change.
A new rule is replayed over every run already trained by ``python -m tests.bench.oppoint_rules
--rows docs/oppoint-study.jsonl``, in seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


from .oppoint_rules import rules_of, table
from .replay_oppoint import recorded
from .study_rows import append_row, budget_left, prepare, run_one, study_args, study_todo


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
        rules = rules_of(recorded(data[variant], feats, str(model)))
        spent.append(time.monotonic() - t)
        append_row(a.rows, {"pool": pool, "variant": variant, "seed": seed, "commit": code_version(), "rules": rules})
        print(f"oppoint_study: {pool} {variant} seed {seed} ({spent[-1]:.0f} s): " + "; ".join(
            f"{r['rule']}: {r['test_saving_pct']:.1f}% at {r['test_change_points']:+.2f}{'' if r['kept'] else ' BROKEN'}"
            for r in rules), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
