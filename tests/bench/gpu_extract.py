"""The extraction core on a GPU: tokens/s in bfloat16 with SDPA, against the GPU's own bf16 matmul
peak measured in the same run (not a test; CI never needs it).

Two steps, because the GPU machine has no network and takes at most 64 MiB with it:

    # here: a kit of what the GPU machine lacks (model config + tokenizer + real prompts, a few MB)
    python tests/bench/gpu_extract.py kit --out out/gpu-kit [--encoder smollm2-135m] [--n 2000]
    # there (the kit carried along): the core over the kit's prompts
    python tests/bench/gpu_extract.py run --kit out/gpu-kit [--device cuda] [--dtype bfloat16]
    # an A/B on the same machine: the core of another revision (git archive REV router_core | tar -x -C DIR)
    python tests/bench/gpu_extract.py run --kit out/gpu-kit --core DIR --out base.json

The weights do not fit the carry limit, so ``run`` builds the encoder from the kit's config with
random weights when the kit has none: speed depends on shapes, not values (the features are then
meaningless, and the script says so). With ``kit --weights`` the converted weights go in too
(SmolLM2-135M: 0.5 GB, for a machine that can take them).

FLOPs counted: 2 x (parameters in matmuls) x tokens run, plus attention's 4 x layers x d x
(context) per token; the fraction of peak is that over the median seconds and the measured peak.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

KIT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
             "special_tokens_map.json", "generation_config.json")


def make_kit(a) -> None:
    from router_core.encoders import resolve_encoder

    cache = os.environ.get("PREFILL_ROUTER_CACHE", str(REPO / ".cache" / "encoders-for-tests"))
    src = Path(resolve_encoder(a.encoder, cache).path)
    out = Path(a.out)
    (out / "model").mkdir(parents=True, exist_ok=True)
    for f in KIT_FILES + (("model.safetensors",) if a.weights else ()):
        if (src / f).exists():
            shutil.copy2(src / f, out / "model" / f)
    from tests.bench.bench_extract import load_prompts  # here, not on the device (it needs psutil)

    prompts = load_prompts(a.n, Path(a.data))  # the same seeded sample as make bench
    (out / "prompts.json").write_text(json.dumps(prompts))
    (out / "kit.json").write_text(json.dumps({"encoder": a.encoder, "weights": bool(a.weights), "prompts": len(prompts)}))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"kit in {out}: {a.encoder} ({'with' if a.weights else 'without'} weights), {len(prompts)} prompts, "
          f"{size / 2**20:.1f} MiB")


def matmul_peak(torch, device: str, dtype, n: int, reps: int = 10) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def breakdown(enc, texts, torch, device: str) -> dict[str, float]:
    """One more run with the device synchronised around every forward and every pooling, their
    seconds summed (the synchronisation itself costs a little: a diagnostic, not the speed)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    acc = {"tokenize": 0.0, "forward": 0.0, "pool": 0.0}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            sync()
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            sync()
            acc[name] += time.perf_counter() - t
            return out
        return wrapper

    for name, attr in (("tokenize", "tokenize"), ("forward", "_forward"), ("pool", "_pool")):
        setattr(enc, attr, timed(name, getattr(enc, attr)))
    sync()
    t = time.perf_counter()
    enc.extract(texts)
    sync()
    acc["total"] = time.perf_counter() - t
    for attr in ("tokenize", "_forward", "_pool"):
        delattr(enc, attr)
    return acc


def run(a) -> None:
    import torch
    from transformers import AutoConfig, AutoModel

    if a.core:  # another revision's router_core, for an A/B in one session on one machine
        sys.path.insert(0, str(Path(a.core).resolve()))
    from router_core.config import ExtractConfig
    from router_core.extraction import Encoder

    print(f"core: {Path(sys.modules['router_core'].__file__).parent}")

    kit = Path(a.kit)
    meta = json.loads((kit / "kit.json").read_text())
    texts = json.loads((kit / "prompts.json").read_text())[: a.n]
    model_dir = kit / "model"
    tmp = None
    if not (model_dir / "model.safetensors").exists():  # random weights of the real shapes
        tmp = Path(tempfile.mkdtemp(prefix="gpu-kit-"))
        conf = AutoConfig.from_pretrained(model_dir)
        torch.manual_seed(0)
        AutoModel.from_config(conf).save_pretrained(tmp)
        for f in KIT_FILES[1:]:
            if (model_dir / f).exists():
                shutil.copy2(model_dir / f, tmp / f)
        model_dir = tmp
    dtype = getattr(torch, a.dtype)
    peak = matmul_peak(torch, a.device, dtype, a.matmul_n)
    print(f"device {a.device} ({torch.cuda.get_device_name() if a.device.startswith('cuda') else 'cpu'}), "
          f"{a.dtype} matmul peak {peak / 1e12:.1f} TFLOP/s ({a.matmul_n}^3, median of 10)", flush=True)
    results = []
    for prefix in (False, True):
        cfg = ExtractConfig(dtype=a.dtype, device=a.device, prefix_sharing=prefix, token_budget=a.token_budget,
                            max_batch_size=a.max_batch_size, layers=a.layers)
        enc = Encoder(cfg, str(model_dir))
        conf = enc.model.config
        n_matmul = sum(p.numel() for p in enc.model.parameters()) - enc.model.get_input_embeddings().weight.numel()
        enc.extract(texts[: min(len(texts), 64)])  # warm-up: kernels, allocator
        secs, res = [], None
        for _ in range(a.repeats):
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            res = enc.extract(texts)
            secs.append(time.perf_counter() - t)
        s, med = res.stats, statistics.median(secs)
        parts = breakdown(enc, texts, torch, a.device)
        # attention: QK^T and AV, 2 x 2 x d_attn x context per token per layer (context ~ half the length)
        d_attn = conf.num_attention_heads * (getattr(conf, "head_dim", None) or conf.hidden_size // conf.num_attention_heads)
        mean_ctx = float(np.mean(res.n_tokens[res.n_tokens > 0])) / 2
        flops = 2 * n_matmul * s.computed_tokens + 4 * enc.run_layers * d_attn * mean_ctx * s.computed_tokens
        results.append({"prefix_sharing": prefix, "seconds": med, "runs": secs, "query_tok_s": s.tokens / med,
                        "computed_tok_s": s.computed_tokens / med, "tokens": s.tokens, "computed": s.computed_tokens,
                        "padding_waste": s.padding_waste, "tokenize_s": parts["tokenize"], "flops_frac": flops / med / peak,
                        "attn": getattr(conf, "_attn_implementation", "?"), "run_layers": enc.run_layers,
                        "breakdown_s": parts})
        del enc
        if a.device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(f"{meta['encoder']} ({'real' if meta['weights'] else 'random'} weights), {len(texts)} prompts, "
          f"layers {a.layers}, token budget {a.token_budget}")
    print(f"{'path':<16}{'query tok/s':>12}{'run tok/s':>11}{'padding':>9}{'of peak':>9}{'attn':>7}{'tokenize':>10}  seconds (runs)")
    for r in results:
        print(f"{'shared prefixes' if r['prefix_sharing'] else 'plain':<16}{r['query_tok_s']:>12,.0f}"
              f"{r['computed_tok_s']:>11,.0f}{100 * r['padding_waste']:>8.1f}%{100 * r['flops_frac']:>8.1f}%"
              f"{r['attn']:>7}{r['tokenize_s']:>9.2f}s  {r['seconds']:.2f} ({', '.join(f'{x:.2f}' for x in r['runs'])})")
    for r in results:
        b = r["breakdown_s"]
        print(f"{'shared prefixes' if r['prefix_sharing'] else 'plain'}: one synchronised run {b['total']:.2f} s = "
              f"tokenize {b['tokenize']:.2f} + forward {b['forward']:.2f} + pool and host copy {b['pool']:.2f} "
              f"+ the rest {b['total'] - b['tokenize'] - b['forward'] - b['pool']:.2f}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"kit": meta, "device": a.device, "dtype": a.dtype, "matmul_peak_flops": peak,
                               "results": results}, indent=2))
    print(f"wrote {out}")
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("kit", help="build the kit here")
    k.add_argument("--out", default=str(REPO / "out" / "gpu-kit"))
    k.add_argument("--encoder", default="smollm2-135m")
    k.add_argument("--n", type=int, default=2000, help="RouterBench prompts")
    k.add_argument("--weights", action="store_true", help="include the converted weights (large)")
    k.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    r = sub.add_parser("run", help="run the core on the device")
    r.add_argument("--kit", default=str(REPO / "out" / "gpu-kit"))
    r.add_argument("--device", default="cuda")
    r.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    r.add_argument("--n", type=int, default=2000)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--token-budget", type=int, default=65536, help="padded tokens per forward batch (a GPU wants many)")
    r.add_argument("--max-batch-size", type=int, default=256)
    r.add_argument("--layers", default="all", help='"all" or comma-separated hidden-state indices')
    r.add_argument("--matmul-n", type=int, default=8192)
    r.add_argument("--core", default=None, help="a folder holding another revision's router_core, run instead of this one's")
    r.add_argument("--out", default=str(REPO / "out" / "bench" / "gpu_extract.json"))
    a = ap.parse_args()
    if a.cmd == "kit":
        make_kit(a)
    else:
        a.layers = a.layers if a.layers == "all" else [int(x) for x in a.layers.split(",")]
        run(a)


if __name__ == "__main__":
    main()
