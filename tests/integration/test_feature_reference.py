"""Features stay what they were: the core's output for fixed prompts against a committed reference.

The reference (tests/data/features_reference.npz, float16 as stored in a features folder) was
written by this module (``python -m tests.integration.test_feature_reference --write``) before the
extraction core's later changes; a change that alters features for the same settings fails here
and must change the settings identity instead (so old caches are refused, not silently mixed).
On the machine kind that wrote it (same torch, same CPU capability) the features must be equal
bit for bit; elsewhere within one float16 step plus 1e-4 of each column's largest value, as the
kernels differ.
"""

import json
import sys
from pathlib import Path

import numpy as np

from router_core.config import ExtractConfig
from router_core.encoders import resolve_encoder
from router_core.extraction import Encoder, settings_identity, settings_key
from tests.conftest import REPO, shared_file

REF = REPO / "tests" / "data" / "features_reference.npz"
META = REF.with_suffix(".json")
# Across CPU kinds the float32 kernels round differently, and 30 layers carry it: an AVX2 machine
# against the AVX512 reference differed by at most 4e-5 of a column's largest value (up to 73 float16
# steps on its mid-size entries). A real change (a token more or less, another pooling) moves
# features by far more than this.
CROSS_KIND = 1e-4
# max_padding=1: the batching the reference was written with (batch composition changes float rounding).
SETTINGS = dict(layers=[0, 1, 15, 29, 30], pooling=["mean", "last", "tail"], tail_tokens=32, token_budget=2048,
                max_padding=1.0)


def prompts() -> list[str]:
    """Four winogrande prompts (one shared few-shot preamble: the KV-cache path), three LLMRouter
    questions (the plain path), one text cut at max_length."""
    import csv

    csv.field_size_limit(2**31 - 1)
    with open(shared_file("routerbench-subset/routerbench_wide.csv"), newline="", encoding="utf-8") as f:
        wino = [r["prompt"] for r in csv.DictReader(f) if r["eval_name"] == "winogrande"][:4]
    with open(shared_file("llmrouter-9/scores_wide.csv"), newline="", encoding="utf-8") as f:
        lr = [r["question"] for r in csv.DictReader(f) if len(r["question"]) < 600][:3]
    return wino + lr + ["word " * 1200 + "Which word came first?"]


def environment() -> dict:
    import platform

    import torch

    # The processor model too: two CPUs of one capability (AVX512) but other vendors' cores were
    # seen to differ by one float16 step in float32 (2026-12-05, an Intel Xeon against the AMD
    # EPYC that wrote the reference).
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "")
    return {"torch": torch.__version__, "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu": model}


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().splitlines()
    except OSError:
        return []


def compute(cache_dir: str):
    import torch

    torch.set_num_threads(2)
    cfg = ExtractConfig(cache_dir=cache_dir, dtype="float32", **SETTINGS)
    r = resolve_encoder(cfg.encoder, cache_dir)
    enc = Encoder(cfg, r.path)
    res = enc.extract(prompts())
    key = settings_key(settings_identity(cfg, r.identity, enc.layers))
    return res, key


def test_features_equal_the_committed_reference(encoder_cache):
    res, key = compute(encoder_cache)
    meta = json.loads(META.read_text())
    assert key == meta["settings_key"], "the settings identity changed: old feature caches would be refused"
    assert res.stats.prefix_groups == 1 and res.truncated.tolist() == [False] * 7 + [True]
    ref = np.load(REF, allow_pickle=False)
    assert sorted(ref.files) == sorted(res.features)
    exact = meta["environment"] == environment()
    for c in ref.files:
        a, b = res.features[c], ref[c]
        if exact:
            np.testing.assert_array_equal(a, b, err_msg=c)
        else:  # one float16 step, plus float32 rounding carried through the layers (CROSS_KIND)
            step = np.spacing(np.abs(b)).astype(np.float32)
            room = step + CROSS_KIND * float(np.abs(b.astype(np.float32)).max())
            assert (np.abs(a.astype(np.float32) - b.astype(np.float32)) <= room).all(), c
    np.testing.assert_array_equal(res.n_tokens, np.array(meta["n_tokens"], dtype=np.int32))


def write() -> None:
    cache = str(REPO / ".cache" / "encoders-for-tests")
    res, key = compute(cache)
    np.savez_compressed(REF, **res.features)
    META.write_text(json.dumps({"settings": SETTINGS, "settings_key": key, "environment": environment(),
                                "n_tokens": res.n_tokens.tolist()}, indent=1) + "\n")
    print(f"wrote {REF} ({REF.stat().st_size} bytes), settings key {key}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.integration.test_feature_reference --write")
    write()
