"""The shared-prefix path's KV budget (extract.kv_budget_tokens): speed and features per budget.

    python tests/bench/bench_kv_budget.py --data OUT/data --n 160 --budgets 4096,8192,16384,32768 --reps 2

Encodes the first N queries of a dataset (RouterBench's are grouped by task, so they share few-shot
preambles) with each budget, interleaved, in one process; prints the median seconds, query tokens/s,
the ratio against the last budget, and the largest feature difference from it (batching changes
float rounding only). A larger budget puts more suffix rows over one prefix in a batch; each row's
cache is a copy of the prefix's keys and values, so a batch's memory traffic grows with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from jobs.common import format_table  # noqa: E402
from jobs.runtime import default_cache_dir  # noqa: E402
from router_core.config import load_config  # noqa: E402
from router_core.dataset import load_dataset  # noqa: E402
from router_core.encoders import resolve_encoder  # noqa: E402
from router_core.extraction import Encoder  # noqa: E402
from router_core.storage import Storage  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a dataset folder (prefill-router import)")
    ap.add_argument("--n", type=int, default=160, help="first N queries")
    ap.add_argument("--budgets", default="4096,8192,16384,32768")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    texts = load_dataset(Storage(), a.data).queries.column("text").to_pylist()[: a.n]
    cfg = load_config(a.config, []).extract
    r = resolve_encoder(cfg.encoder, cfg.cache_dir or default_cache_dir())
    budgets = [int(b) for b in a.budgets.split(",")]
    encs = {b: Encoder(cfg.model_copy(update={"kv_budget_tokens": b}), r.path) for b in budgets}
    torch.set_num_threads(a.threads)
    times: dict[int, list[float]] = {b: [] for b in budgets}
    feats, stats = {}, {}
    for rep in range(a.reps):
        for b in budgets:
            res = encs[b].extract(texts)
            times[b].append(res.stats.seconds)
            feats[b], stats[b] = res.features, res.stats
            print(f"rep {rep} budget {b}: {res.stats.seconds:.1f} s, {res.stats.forward_batches} batches", flush=True)
    base = budgets[-1]
    rows = []
    for b in budgets:
        med = statistics.median(times[b])
        diff = max(float(np.abs(feats[b][c].astype(np.float32) - feats[base][c].astype(np.float32)).max())
                   for c in feats[b])
        rows.append([b, f"{med:.1f}", f"{stats[b].tokens / med:,.0f}", f"{statistics.median(times[base]) / med:.2f}x",
                     stats[b].forward_batches, stats[b].padded_slots, f"{diff:.3g}"])
    print(f"{len(texts)} queries, {stats[base].tokens:,} query tokens, {stats[base].prefix_groups} shared prefixes, "
          f"dtype {encs[base].cfg.dtype}, {a.threads} threads")
    print(format_table(["kv budget", "median s", "tokens/s", f"vs {base}", "batches", "padded slots", "max |diff|"], rows))


if __name__ == "__main__":
    main()
