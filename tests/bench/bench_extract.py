"""Extraction benchmark: ``make bench`` (not part of the tests).

On two real corpora (N RouterBench prompts, which share few-shot preambles, and M LLMRouter-9
questions, which share only the chat template's head), in one process and one run, prints tokens/s of:
  - a plain transformers loop: fixed batches of 16 in input order (the usual baseline; float32);
  - per dtype (float32, and bfloat16 where this CPU has it natively, or --dtypes), with prefix
    sharing off and on: the core in this process (length-sorted token-budget batches, shared-prefix
    KV reuse), and the Ray job end to end (one actor, the same threads) on the same settings;
plus the job/core ratio, padding waste, peak memory (and the actor's against what it asked the
scheduler for), this CPU's measured matmul throughput in each dtype and the extraction's share of
it, the features' differences between paths and dtypes, and the job's memory at two corpus
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
from jobs.runtime import cpu_bf16_is_fast  # noqa: E402
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


CORPORA = {  # name: (file under the data folder, text column)
    "routerbench": ("routerbench-subset/routerbench_wide.csv", "prompt"),
    "llmrouter": ("llmrouter-9/scores_wide.csv", "question"),
}


def load_prompts(n: int, data: Path, corpus: str = "routerbench") -> list[str]:
    """N texts of a corpus drawn at random (seed 0)."""
    csv.field_size_limit(2**31 - 1)
    path, column = CORPORA[corpus]
    with open(data / path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(0)
    idx = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    return [rows[i][column] for i in idx]


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
    ap.add_argument("--n-questions", type=int, default=500, help="LLMRouter-9 questions (default 500; 0 leaves them out)")
    ap.add_argument("--memory-sizes", default="500,5000", help="corpus sizes for the job's memory check")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--dtypes", help="compute dtypes to run (default: float32, and bfloat16 where the CPU has it natively)")
    ap.add_argument("--prefix", choices=["both", "on", "off"], default="both",
                    help="prefix sharing in the core and job runs (default both; 'on' times a large shared-prefix corpus "
                         "without its slow unshared twin)")
    ap.add_argument("--no-plain-loop", action="store_true", help="leave out the fixed-batch float32 baseline loop")
    ap.add_argument("--out", default=str(REPO / "out" / "bench" / "extract.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = os.environ.get("PREFILL_ROUTER_CACHE", str(REPO / ".cache" / "encoders-for-tests"))
    corpora = {"routerbench": load_prompts(args.n, Path(args.data), "routerbench")}
    if args.n_questions:
        corpora["llmrouter"] = load_prompts(args.n_questions, Path(args.data), "llmrouter")
    ecfg = ExtractConfig(cache_dir=cache, dtype="float32")  # the float32 rows; "auto" is bfloat16 on some CPUs
    resolved = resolve_encoder(ecfg.encoder, cache)
    enc = Encoder(ecfg, resolved.path)
    n_params = sum(p.numel() for p in enc.model.parameters())
    n_matmul = n_params - enc.model.get_input_embeddings().weight.numel()  # the lookup is no matmul
    print(f"encoder {ecfg.encoder}: {n_params / 1e6:.1f}M parameters ({n_matmul / 1e6:.1f}M in matmuls), "
          f"{enc.n_hidden} hidden states x {enc.hidden_size}, "
          + ", ".join(f"{len(t)} {c} texts" for c, t in corpora.items()) + f", {args.threads} threads",
          flush=True)

    native_bf16 = cpu_bf16_is_fast()
    dtypes = [d.strip() for d in (args.dtypes or ("float32,bfloat16" if native_bf16 else "float32")).split(",")]
    if "bfloat16" not in dtypes:
        print("bfloat16 left out: this CPU has no native bfloat16 (no avx512_bf16 / AMX), where it is emulated "
              "several times slower; --dtypes float32,bfloat16 runs it anyway", flush=True)
    prefix_modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.prefix]
    peaks = {d: matmul_flops(getattr(torch, d)) for d in dtypes}
    results: dict[str, dict] = {}
    feats: dict[str, dict] = {}

    def record(name, dtype, r, mem):
        feats[name] = r.pop("features", None)
        r.update(tok_s=r["tokens"] / r["seconds"], peak_rss_mb=mem, dtype=dtype)
        r["flops_frac"] = 2 * n_matmul * r["computed"] / r["seconds"] / peaks[dtype]
        results[name] = r
        print(f"  done {name}: {r['tok_s']:.0f} tok/s", flush=True)

    for corpus, texts in corpora.items():
        if "float32" in dtypes and not args.no_plain_loop:
            with PeakRSS() as m:
                plain = plain_loop(enc, texts)
            record(f"{corpus}: plain loop, fixed batches, float32", "float32", plain, m.peak_mb)
        for dtype in dtypes:
            e = enc if dtype == "float32" else Encoder(ecfg.model_copy(update={"dtype": dtype}), resolved.path)
            for prefix in prefix_modes:
                with PeakRSS() as m:
                    r = core_run(e, texts, prefix=prefix)
                record(f"{corpus}: core, {'shared prefixes' if prefix else 'no prefix sharing'}, {dtype}", dtype, r,
                       m.peak_mb)
            if e is not enc:
                del e

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    t = time.perf_counter()
    ray.init(num_cpus=args.threads, include_dashboard=False, _node_ip_address="127.0.0.1",
             configure_logging=False, log_to_driver=False)
    ray_start = time.perf_counter() - t
    memory = {}
    with tempfile.TemporaryDirectory() as work:
        for corpus, texts in corpora.items():
            for dtype in dtypes:
                for prefix in prefix_modes:
                    cfg = AppConfig.model_validate({"extract": {"cache_dir": cache, "torch_threads": args.threads,
                                                                "rows_per_task": 512, "dtype": dtype,
                                                                "prefix_sharing": prefix}})
                    with PeakRSS() as m:
                        job, run = job_run(cfg, texts, work, f"job-{corpus}-{dtype}-{prefix}")
                    name = f"{corpus}: Ray job, {'shared prefixes' if prefix else 'no prefix sharing'}, {dtype}"
                    record(name, dtype, job, m.peak_mb)
                    results[name].update(actor_peak_rss_mb=run.actor_peak_rss_mb, actor_memory_mb=run.actor_memory_mb,
                                         encoder_seconds=run.stats.seconds)
        # Memory against corpus size: same settings with a 16-token cap so 5,000 queries fit the run.
        capped = AppConfig.model_validate({"extract": {"cache_dir": cache, "torch_threads": args.threads,
                                                       "rows_per_task": 512, "dtype": "float32", "max_length": 16}})
        pool = load_prompts(3178, Path(args.data))
        for size in [int(s) for s in args.memory_sizes.split(",") if s]:
            corpus = [pool[i % len(pool)] + f"\nVariant {i // len(pool)}." for i in range(size)]
            with PeakRSS() as m:
                r, run = job_run(capped, corpus, work, f"mem{size}")
            memory[size] = {"driver_peak_rss_mb": m.peak_mb, "actor_peak_rss_mb": run.actor_peak_rss_mb,
                            "seconds": r["seconds"], "tok_s": r["tokens"] / r["seconds"]}
            print(f"  done memory check at {size} queries", flush=True)
    ray.shutdown()

    rows = []
    for name, r in results.items():
        base_name = name.split(": ")[0] + ": plain loop, fixed batches, float32"
        base = results[base_name]["tok_s"] if base_name in results else None
        core = results.get(name.replace("Ray job", "core")) if ": Ray job" in name else None
        rows.append([name, f"{r['tok_s']:.0f}", f"{r['tok_s'] / base:.2f}x" if base else "-",
                     f"{r['tok_s'] / core['tok_s']:.2f}x" if core else "-", r["computed"],
                     f"{100 * r['waste']:.1f}%", f"{100 * r['flops_frac']:.0f}%", f"{r['peak_rss_mb']:.0f}",
                     f"{r['actor_peak_rss_mb']:.0f} / {r['actor_memory_mb']:.0f}" if "actor_memory_mb" in r else "-",
                     f"{r['encoder_seconds'] / core['seconds']:.2f}x" if core else "-",
                     f"{r['seconds'] - r['encoder_seconds']:.1f}" if core else "-"])
    print()
    print(format_table(["run", "query tok/s", "vs plain loop", "job / core", "tokens run", "padding",
                        "of matmul peak", "peak RSS MB", "actor RSS / asked MB", "actor encode / core",
                        "job fixed s"], rows))
    print("job / core: end to end; actor encode / core: seconds inside the actor's encoder calls against the core's "
          "(the per-token cost); job fixed s: the rest (actor start, model load, read, hash, write), paid once per job")
    print()
    print("matmul peak measured here: " + ", ".join(f"{d} {p / 1e9:.0f} GFLOP/s" for d, p in peaks.items())
          + f" (2048^3, median of 5); FLOPs counted as 2 x {n_matmul / 1e6:.0f}M x tokens run; "
          f"ray.init {ray_start:.1f} s (not counted)")
    diffs = {}
    for corpus in corpora:
        for dtype in dtypes:
            a = feats.get(f"{corpus}: core, shared prefixes, {dtype}")
            b = feats.get(f"{corpus}: core, no prefix sharing, {dtype}")
            if a is not None and b is not None:
                diffs[f"{corpus}_prefix_vs_plain_{dtype}"] = d = max_diff(a, b)
                print(f"{corpus}, shared prefixes vs plain, {dtype}: max abs diff {d[0]:.3g}, max relative {d[1]:.2e}")
        if len(dtypes) > 1 and "float32" in dtypes:
            for dtype in dtypes[1:]:
                diffs[f"{corpus}_{dtype}_vs_float32"] = d = max_diff(feats[f"{corpus}: core, shared prefixes, {dtype}"],
                                                                      feats[f"{corpus}: core, shared prefixes, float32"])
                print(f"{corpus}, {dtype} vs float32: max abs diff {d[0]:.3g}, max relative {d[1]:.2e}")
    print("job memory vs corpus size (16-token cap): " + "; ".join(
        f"{k} queries: driver {v['driver_peak_rss_mb']:.0f} MB, actor {v['actor_peak_rss_mb']:.0f} MB"
        for k, v in memory.items()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "n_texts": {c: len(t) for c, t in corpora.items()}, "threads": args.threads, "matmul_gflops": {d: p / 1e9 for d, p in peaks.items()},
        "runs": results, "feature_diffs": diffs, "memory": memory, "ray_init_seconds": ray_start}, indent=2,
        default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
