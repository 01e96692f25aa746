"""Where the extraction core's time goes, operator by operator (not part of the tests).

    python tests/bench/profile_extract.py --dtype bfloat16 --corpus llmrouter --n 120

Runs ``Encoder.extract`` once to warm up, then once under torch's profiler, and prints the
share of CPU time of the weight matmuls (aten::mm, with their achieved GFLOP/s against this CPU's
2048^3 matmul measured in the same run), the attention kernel, the elementwise ops (norms,
rotary, activation, residual adds) and the rest, then torch's own table of the top operators.
The bench's "of matmul peak" column counts the weight matmuls' FLOPs over the whole time; this
says what the other part of the time is.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from router_core.config import ExtractConfig  # noqa: E402
from router_core.encoders import resolve_encoder  # noqa: E402
from router_core.extraction import Encoder  # noqa: E402
from tests.bench.bench_extract import load_prompts, matmul_flops  # noqa: E402

GROUPS = {  # operator name -> group
    "aten::mm": "weight matmuls", "aten::addmm": "weight matmuls",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention", "aten::bmm": "attention",
    "aten::_softmax": "attention",
    "aten::mul": "elementwise", "aten::add": "elementwise", "aten::silu": "elementwise", "aten::pow": "elementwise",
    "aten::rsqrt": "elementwise", "aten::mean": "elementwise", "aten::neg": "elementwise", "aten::cat": "elementwise",
    "aten::copy_": "copies and casts", "aten::_to_copy": "copies and casts",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--corpus", choices=["routerbench", "llmrouter"], default="llmrouter")
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--prefix", action="store_true", help="prefix sharing on (off by default: the plain path)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cache = os.environ.get("PREFILL_ROUTER_CACHE", str(REPO / ".cache" / "encoders-for-tests"))
    cfg = ExtractConfig(cache_dir=cache, dtype=args.dtype, prefix_sharing=args.prefix)
    enc = Encoder(cfg, resolve_encoder(cfg.encoder, cache).path)
    texts = load_prompts(args.n, Path(args.data), args.corpus)
    enc.extract(texts[: max(1, args.n // 6)])
    peak = matmul_flops(getattr(torch, args.dtype))
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        res = enc.extract(texts)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    shares: dict[str, float] = {}
    for e in events:
        g = GROUPS.get(e.key, "other")
        shares[g] = shares.get(g, 0.0) + e.self_cpu_time_total
    n_matmul = sum(p.numel() for p in enc.model.parameters()) - enc.model.get_input_embeddings().weight.numel()
    mm_s = shares.get("weight matmuls", 0.0) / 1e6  # the profiler times each op on its calling thread (wall)
    s = res.stats
    print(f"{args.corpus}, {args.n} texts, {args.dtype}, prefix sharing {'on' if args.prefix else 'off'}, "
          f"{args.threads} threads: {s.computed_tokens} tokens run in {s.padded_slots} padded slots, {s.seconds:.1f} s")
    for g in ("weight matmuls", "attention", "elementwise", "copies and casts", "other"):
        print(f"  {g:18s} {100 * shares.get(g, 0.0) / total:5.1f}% of the profiled CPU time")
    flops = 2 * n_matmul * s.padded_slots
    print(f"  weight matmuls: {flops / 1e9 / max(mm_s, 1e-9):.0f} GFLOP/s over padded slots while they run "
          f"(matmul peak measured here: {peak / 1e9:.0f} GFLOP/s); whole extraction: "
          f"{100 * 2 * n_matmul * s.computed_tokens / s.seconds / peak:.0f}% of that peak")
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
