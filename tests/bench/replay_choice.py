"""Replay the choice rule of ``router_core.selection.choose`` on a study's trained models: no router is
refitted or predicted, so a change to the rule is measured on every seed in seconds. Each candidate's
per-part scores are recomputed from the probabilities the model kept on the rows it chose on
(MODEL/held_out.parquet, router_core.held_out), where it has them, so a rule may also read
probabilities; else they are the scores it recorded (``selection.candidates.*.per_part``).

    python -m tests.bench.replay_choice STUDY/rb STUDY/lr ...   # folders written by study_router

For each seed: the router the model served, the one the rule in this checkout picks, and both routers'
test P-AUCCC from the study's report (test is reported, never used to choose). Models trained before
the per-part scores were recorded are skipped with a note.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import pyarrow.parquet as pq

from router_core.held_out import HeldOut, from_table
from router_core.selection import COMPLEXITY, PRIORS, SERVABLE, Scored, choose


def candidates(model: Path) -> tuple[dict[str, Scored], HeldOut | None]:
    """The servable candidates of ``model`` with their per-part scores (and probabilities, where kept)."""
    index = json.loads((model / "manifest.json").read_text())
    cands = index["selection"]["candidates"]
    if index.get("held_out"):
        h = from_table(pq.read_table(model / index["held_out"]), str(model / index["held_out"]))[0]
        scored = {}
        for k, p in h.proba.items():
            if k not in SERVABLE:
                continue
            per, recorded = h.per_part(k), np.asarray(cands[k]["per_part"], float)
            # Validation rows were scored over several repeats of the folds; the file holds the first.
            if len(recorded) < len(per) or np.abs(recorded[: len(per)] - per).max() > 1e-5:
                raise SystemExit(f"{model}: {k}'s per-part scores from {index['held_out']} differ from the recorded ones")
            scored[k] = Scored(float(recorded.mean()), recorded, p)
        return scored, h
    return {k: Scored(float(np.mean(v["per_part"])), np.asarray(v["per_part"], float), None)
            for k, v in cands.items() if v.get("per_part") and k in SERVABLE}, None


def replay(study: Path) -> list[dict]:
    runs = json.loads((study / "study.json").read_text())
    out = []
    for name, d in runs.items():
        for run in d["runs"]:
            scored, _ = candidates(study / name / f"seed{run['seed']}" / "model")
            if not scored:
                print(f"{name} seed {run['seed']}: no per-part scores recorded (trained before they were); skipped")
                continue
            null = next((p for p in PRIORS if p in scored), None)
            now, _ = choose(scored, COMPLEXITY, null=null)
            test = run["routers"]
            row = {"pool": name, "seed": run["seed"], "served": run["serving"], "replayed": now,
                   "test_served": test[run["serving"]]["p_auccc"], "test_replayed": test[now]["p_auccc"]}
            print(f"{name} seed {row['seed']}: served {row['served']} {row['test_served']:.4f}, "
                  f"this rule {now} {row['test_replayed']:.4f} ({row['test_replayed'] - row['test_served']:+.4f})")
            out.append(row)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("studies", nargs="+", type=Path, help="folders written by tests.bench.study_router --out")
    rows = [r for s in ap.parse_args(argv).studies for r in replay(s)]
    if rows:
        d = [r["test_replayed"] - r["test_served"] for r in rows]
        changed = sum(r["served"] != r["replayed"] for r in rows)
        print(f"{changed} of {len(rows)} runs change; test P-AUCCC difference {np.mean(d):+.4f} on average, "
              f"{np.sum(d):+.4f} summed")


if __name__ == "__main__":
    main()
