"""Extraction benchmark: ``make bench`` (not part of the tests).

On the same N real RouterBench prompts, in one process and one run, prints tokens/s of:
  (1) a plain transformers loop: fixed batches of 16 in input order (the usual baseline);
  (2) the core with length-sorted token-budget batches, prefix sharing off;
  (2p) the core with shared-prefix KV reuse (the default);
  (3) the Ray job end to end (one actor, the same threads), prefix sharing on, and (3n) off;
plus padding waste, peak memory, this CPU's measured matmul throughput in the same dtype and the
extraction's share of it, bfloat16's speed and accuracy cost, and the job's memory at two corpus
sizes. Results are printed as a table with ratios and written to out/bench/extract.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from jobs.common import format_table  # noqa: E402
from router_core.config import AppConfig, ExtractConfig  # noqa: E402
from router_core.encoders import resolve_encoder  # noqa: E402
from router_core.extraction import Encoder, padding_waste  # noqa: E402


class PeakRSS:
    """Samples this process's RSS every 20 ms; .peak_mb after the with-block."""

    def __enter__(self):
        self.proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self.t.join()
        self.peak_mb = self.peak / 2**20


def load_prompts(n: int, data: Path) -> list[str]:
    csv.field_size_limit(2**31 - 1)
    with open(data / "routerbench-subset" / "routerbench_wide.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(0)
    idx = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    return [rows[i]["prompt"] for i in idx]


def matmul_flops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def plain_loop(enc: Encoder, texts: list[str], batch: int = 16) -> dict:
    """The baseline: fixed batches in input order, right padding, same pooling work."""
    ids, _, _ = enc.tokenize(texts)
    lens = [len(x) for x in ids]
    batches = [list(range(i, min(i + batch, len(ids)))) for i in range(0, len(ids), batch)]
    feats = {c: np.zeros((len(texts), enc.hidden_size), np.float16) for c in enc.columns}
    t = time.perf_counter()
    with torch.inference_mode():
        for b in batches:
            out, blens = enc._forward([ids[i] for i in b])
            enc._pool(out.hidden_states, b, blens, feats)
    secs = time.perf_counter() - t
    real, slots = padding_waste(lens, batches)
    return {"seconds": secs, "tokens": real, "computed": real, "waste": 1 - real / slots, "features": feats}


def core_run(enc: Encoder, texts: list[str], prefix: bool) -> dict:
    enc.cfg = enc.cfg.model_copy(update={"prefix_sharing": prefix})
    res = enc.extract(texts)
    s = res.stats
    return {"seconds": s.seconds, "tokens": s.tokens, "computed": s.computed_tokens, "waste": s.padding_waste,
            "features": res.features}


def job_run(cfg: AppConfig, texts: list[str], workdir: str, tag: str) -> tuple[dict, object]:
    import pyarrow as pa

    from jobs.extract import run_extract
    from router_core.storage import Storage

    src = os.path.join(workdir, f"{tag}.parquet")
    Storage().write_table(pa.table({"query_id": [f"q{i}" for i in range(len(texts))], "text": texts,
                                    "split": [None] * len(texts), "task": [None] * len(texts)}), src)
    out = os.path.join(workdir, f"feats-{tag}")
    t = time.perf_counter()
    run = run_extract(cfg, src, out)
    secs = time.perf_counter() - t
    s = run.stats
    return {"seconds": secs, "tokens": s.tokens, "computed": s.computed_tokens, "waste": s.padding_waste}, run


def max_diff(a: dict, b: dict) -> tuple[float, float]:
    """Largest absolute and largest per-vector relative difference over all columns."""
    abs_max, rel_max = 0.0, 0.0
    for c in a:
        x, y = a[c].astype(np.float32), b[c].astype(np.float32)
        d = np.abs(x - y)
        abs_max = max(abs_max, float(d.max()))
        rel_max = max(rel_max, float((d.max(axis=1) / (np.abs(y).max(axis=1) + 1e-3)).max()))
    return abs_max, rel_max


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500, help="RouterBench prompts (default 500)")
    ap.add_argument("--memory-sizes", default="500,5000", help="corpus sizes for the job's memory check")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=str(REPO / "out" / "bench" / "extract.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = os.environ.get("PREFILL_ROUTER_CACHE", str(REPO / ".cache" / "encoders-for-tests"))
    texts = load_prompts(args.n, Path(args.data))
    ecfg = ExtractConfig(cache_dir=cache)
    resolved = resolve_encoder(ecfg.encoder, cache)
    enc = Encoder(ecfg, resolved.path)
    n_params = sum(p.numel() for p in enc.model.parameters())
    n_matmul = n_params - enc.model.get_input_embeddings().weight.numel()  # the lookup is no matmul
    print(f"encoder {ecfg.encoder}: {n_params / 1e6:.1f}M parameters ({n_matmul / 1e6:.1f}M in matmuls), "
          f"{enc.n_hidden} hidden states x {enc.hidden_size}, {len(texts)} prompts, {args.threads} threads",
          flush=True)

    peak_fp32 = matmul_flops(torch.float32)
    peak_bf16 = matmul_flops(torch.bfloat16)
    rows, results = [], {}

    def record(name, r, mem):
        r = {k: v for k, v in r.items() if k != "features"}
        r.update(tok_s=r["tokens"] / r["seconds"], peak_rss_mb=mem)
        r["flops_frac"] = 2 * n_matmul * r["computed"] / r["seconds"] / (peak_bf16 if "bf16" in name else peak_fp32)
        results[name] = r
        print(f"  done {name}: {r['tok_s']:.0f} tok/s", flush=True)

    with PeakRSS() as m:
        plain = plain_loop(enc, texts)
    record("(1) plain loop, fixed batches", plain, m.peak_mb)
    with PeakRSS() as m:
        sorted_ = core_run(enc, texts, prefix=False)
    record("(2) core, sorted token budget", sorted_, m.peak_mb)
    with PeakRSS() as m:
        shared = core_run(enc, texts, prefix=True)
    record("(2p) core + shared prefixes", shared, m.peak_mb)
    bf = Encoder(ecfg.model_copy(update={"dtype": "bfloat16"}), resolved.path)
    with PeakRSS() as m:
        shared_bf16 = core_run(bf, texts, prefix=True)
    record("(2p) core + shared prefixes, bf16", shared_bf16, m.peak_mb)
    del bf

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    t = time.perf_counter()
    ray.init(num_cpus=args.threads, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, log_to_driver=False)
    ray_start = time.perf_counter() - t
    cfg = AppConfig.model_validate({"extract": {"cache_dir": cache, "torch_threads": args.threads,
                                                "rows_per_task": 512}})
    memory = {}
    with tempfile.TemporaryDirectory() as work:
        with PeakRSS() as m:
            job, run = job_run(cfg, texts, work, "job")
        record("(3) Ray job end to end", job, m.peak_mb)
        results["(3) Ray job end to end"]["actor_peak_rss_mb"] = run.actor_peak_rss_mb
        # The same job with prefix sharing off: like for like against (2).
        plain_cfg = cfg.model_copy(update={"extract": cfg.extract.model_copy(update={"prefix_sharing": False})})
        with PeakRSS() as m:
            job_plain, run = job_run(plain_cfg, texts, work, "job-plain")
        record("(3n) Ray job, no prefix sharing", job_plain, m.peak_mb)
        # Memory against corpus size: same settings with a 16-token cap so 5,000 queries fit the run.
        capped = cfg.model_copy(update={"extract": cfg.extract.model_copy(update={"max_length": 16})})
        pool = load_prompts(3178, Path(args.data))
        for size in [int(s) for s in args.memory_sizes.split(",")]:
            corpus = [pool[i % len(pool)] + f"\nVariant {i // len(pool)}." for i in range(size)]
            with PeakRSS() as m:
                r, run = job_run(capped, corpus, work, f"mem{size}")
            memory[size] = {"driver_peak_rss_mb": m.peak_mb, "actor_peak_rss_mb": run.actor_peak_rss_mb,
                            "seconds": r["seconds"], "tok_s": r["tok_s"] if "tok_s" in r else r["tokens"] / r["seconds"]}
            print(f"  done memory check at {size} queries", flush=True)
    ray.shutdown()

    base = results["(1) plain loop, fixed batches"]["tok_s"]
    for name, r in results.items():
        rows.append([name, f"{r['tok_s']:.0f}", f"{r['tok_s'] / base:.2f}x", r["computed"],
                     f"{100 * r['waste']:.1f}%", f"{100 * r['flops_frac']:.0f}%", f"{r['peak_rss_mb']:.0f}"])
    print()
    print(format_table(["run", "query tok/s", "vs (1)", "tokens run", "padding", "of matmul peak",
                        "peak RSS MB"], rows))
    r2, r2p, r3 = (results[k]["tok_s"] for k in ("(2) core, sorted token budget", "(2p) core + shared prefixes",
                                                   "(3) Ray job end to end"))
    d_prefix = max_diff(shared["features"], sorted_["features"])
    d_bf16 = max_diff(shared_bf16["features"], shared["features"])
    print()
    print(f"matmul peak measured here: fp32 {peak_fp32 / 1e9:.0f} GFLOP/s, bf16 {peak_bf16 / 1e9:.0f} GFLOP/s "
          f"(2048^3, median of 5); FLOPs counted as 2 x {n_matmul / 1e6:.0f}M x tokens run")
    r3n = results["(3n) Ray job, no prefix sharing"]["tok_s"]
    print(f"ratios: (2)/(1) = {r2 / base:.2f}x   (2p)/(2) = {r2p / r2:.2f}x   (3n)/(2) = {r3n / r2:.2f}x   "
          f"(3)/(2p) = {r3 / r2p:.2f}x   (3)/(2) = {r3 / r2:.2f}x   ray.init {ray_start:.1f} s (not counted)")
    print(f"shared prefixes vs plain: max abs diff {d_prefix[0]:.3g}, max relative {d_prefix[1]:.2e}")
    print(f"bfloat16 vs float32:      max abs diff {d_bf16[0]:.3g}, max relative {d_bf16[1]:.2e}")
    print("job memory vs corpus size (16-token cap): " + "; ".join(
        f"{k} queries: driver {v['driver_peak_rss_mb']:.0f} MB, actor {v['actor_peak_rss_mb']:.0f} MB"
        for k, v in memory.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "n_prompts": len(texts), "threads": args.threads, "matmul_gflops": {"fp32": peak_fp32 / 1e9, "bf16": peak_bf16 / 1e9},
        "runs": results, "prefix_vs_plain_diff": d_prefix, "bf16_vs_fp32_diff": d_bf16, "memory": memory,
        "ray_init_seconds": ray_start}, indent=2, default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
