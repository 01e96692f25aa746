"""The shared-prefix path's settings: speed and features of a few extraction variants, interleaved.

    python tests/bench/bench_prefix.py --data OUT/data --n 160 \
        --variants kv_budget_tokens=32768 kv_budget_tokens=8192 kv_budget_tokens=4096
    python tests/bench/bench_prefix.py --data LLMROUTER --n 300 --sample \
        --variants prefix_sharing=false min_prefix_tokens=32 min_prefix_tokens=16

Each variant is a set of ``extract`` overrides (``key=value``, comma-separated) on the config's
settings. Encodes N queries of a dataset (the first N: RouterBench's are grouped by task, so they
share few-shot preambles; ``--sample``: N drawn at random) with each variant, interleaved, in one
process; prints the median seconds, query tokens/s, the speed-up over the first variant, the tokens
the forward passes computed, and the largest feature difference from the first variant, absolute
and relative to each vector's largest entry, as the extraction tests compare (prefix reuse and
batching change float rounding only).
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
from jobs.runtime import concrete_extract, default_cache_dir  # noqa: E402
from router_core.config import load_config  # noqa: E402
from router_core.dataset import load_dataset  # noqa: E402
from router_core.encoders import resolve_encoder  # noqa: E402
from router_core.extraction import Encoder  # noqa: E402
from router_core.storage import Storage  # noqa: E402
from tests.bench.bench_extract import max_diff  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a dataset folder (prefill-router import)")
    ap.add_argument("--n", type=int, default=160, help="N queries")
    ap.add_argument("--sample", action="store_true", help="N queries drawn at random (seed 0), not the first N")
    ap.add_argument("--variants", nargs="+", default=["kv_budget_tokens=32768", "kv_budget_tokens=8192"],
                    help="extract overrides per variant, e.g. min_prefix_tokens=16,kv_budget_tokens=4096")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    texts = load_dataset(Storage(), a.data).queries.column("text").to_pylist()
    if a.sample:
        texts = [texts[i] for i in np.random.default_rng(0).choice(len(texts), min(a.n, len(texts)), replace=False)]
    texts = texts[: a.n]
    cfg = concrete_extract(load_config(a.config, [])).extract  # extract.dtype auto decided once
    r = resolve_encoder(cfg.encoder, cfg.cache_dir or default_cache_dir())
    encs = {}
    for v in a.variants:
        update = dict(kv.split("=", 1) for kv in v.split(","))
        encs[v] = Encoder(cfg.model_validate({**cfg.model_dump(), **update}), r.path)
    torch.set_num_threads(a.threads)
    times: dict[str, list[float]] = {v: [] for v in a.variants}
    feats, stats = {}, {}
    for rep in range(a.reps):
        for v in a.variants:
            res = encs[v].extract(texts)
            times[v].append(res.stats.seconds)
            feats[v], stats[v] = res.features, res.stats
            print(f"rep {rep} {v}: {res.stats.seconds:.1f} s, {res.stats.prefix_groups} shared prefixes, "
                  f"{res.stats.forward_batches} batches", flush=True)
    base = a.variants[0]
    rows = []
    for v in a.variants:
        med = statistics.median(times[v])
        diff, rel = max_diff(feats[v], feats[base])
        rows.append([v, f"{med:.1f}", f"{stats[v].tokens / med:,.0f}", f"{statistics.median(times[base]) / med:.2f}x",
                     f"{stats[v].computed_tokens:,}", stats[v].prefix_groups, stats[v].forward_batches, f"{diff:.3g}",
                     f"{rel:.2g}"])
    print(f"{len(texts)} queries, {stats[base].tokens:,} query tokens, dtype {encs[base].cfg.dtype}, {a.threads} threads, "
          f"medians of {a.reps}")
    print(format_table(["variant", "median s", "query tok/s", f"vs {base}", "tokens run", "shared prefixes",
                        "batches", "max |diff|", "relative"], rows))


if __name__ == "__main__":
    main()
