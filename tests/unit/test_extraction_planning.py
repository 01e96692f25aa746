"""Known answers for the batching and prefix planners (pure, no model)."""

import pytest

from router_core.extraction import budget_batches, padding_waste, prefix_groups, settings_key, text_hash


def test_budget_batches_respect_budget_and_cover_every_index():
    lengths = [5, 100, 7, 98, 6, 50, 51, 8, 300]
    batches = budget_batches(lengths, token_budget=200, max_batch=3)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 200
    assert batches[0] == [8]  # longer than the budget: alone
    real, slots = padding_waste(lengths, batches)
    assert real == sum(lengths) and slots >= real


def test_length_sorting_wastes_less_padding_than_input_order():
    lengths = [10, 400, 12, 390, 11, 405, 9, 380] * 4
    sorted_b = budget_batches(lengths, token_budget=1700, max_batch=4)
    fixed = [list(range(i, i + 4)) for i in range(0, len(lengths), 4)]
    r1, s1 = padding_waste(lengths, sorted_b)
    r2, s2 = padding_waste(lengths, fixed)
    assert 1 - r1 / s1 < 0.05 < 0.4 < 1 - r2 / s2


def test_a_row_padded_by_more_than_max_padding_starts_a_new_batch():
    lengths = [466, 300, 250, 167, 160, 20, 18]  # a long tail: the budget alone takes them all
    loose = budget_batches(lengths, token_budget=8192, max_batch=64)
    tight = budget_batches(lengths, token_budget=8192, max_batch=64, max_padding=0.25)
    assert len(loose) == 1 and sorted(i for b in tight for i in b) == list(range(len(lengths)))
    for b in tight:
        w = max(lengths[i] for i in b)
        assert all(w - lengths[i] <= max(8, 0.25 * w) for i in b)
    assert padding_waste(lengths, tight)[1] < 0.5 * padding_waste(lengths, loose)[1]
    assert budget_batches([20, 13, 12], 8192, 64, max_padding=0.25) == [[0, 1, 2]]  # 8 tokens or fewer: kept together


def test_prefix_groups_find_two_preambles_and_leave_loners():
    sys = list(range(1000, 1010))  # a short system turn every query starts with
    a = sys + list(range(100, 160))  # preamble A: 70 tokens with the system turn
    b = sys + list(range(200, 240))  # preamble B: 50 tokens
    seqs = [a + [i, i + 1] for i in range(6)] + [b + [i] for i in range(5)] + [sys + [7, 7, 7]] + [[1, 2, 3]]
    groups, singles = prefix_groups(seqs, min_prefix=8, min_group=3)
    got = sorted((g.prefix_len, sorted(g.members)) for g in groups)
    # Splitting at the preambles saves more than grouping all 12 on the 10-token system turn.
    assert got == [(50, [6, 7, 8, 9, 10]), (70, [0, 1, 2, 3, 4, 5])]
    assert sorted(singles) == [11, 12]


def test_prefix_never_swallows_a_whole_query():
    base = list(range(50))
    seqs = [base, base + [1], base + [2], base + [3]]
    groups, singles = prefix_groups(seqs, min_prefix=8, min_group=3)
    assert len(groups) == 1 and groups[0].prefix_len == 49 and not singles
    for i in groups[0].members:
        assert len(seqs[i]) > groups[0].prefix_len


def test_identity_keys():
    assert text_hash("é") == text_hash("é") != text_hash("e")
    k1 = settings_key({"encoder": "x", "max_length": 512})
    assert k1 == settings_key({"max_length": 512, "encoder": "x"}) != settings_key({"encoder": "x", "max_length": 1024})


def test_text_hashes_from_the_buffer_equal_text_hash():
    import pyarrow as pa

    from router_core.extraction import text_hash, text_hashes

    texts = ["plain", "", "naïve café ☕", "日本語のテキスト", "x" * 5000, "tab\tand\nnewline"]
    col = pa.chunked_array([pa.array(texts[:2]), pa.array(texts[2:])])
    assert text_hashes(col).to_pylist() == [text_hash(t) for t in texts]
    sliced = pa.array(texts).slice(2, 3)  # an offset into the buffers
    assert text_hashes(sliced).to_pylist() == [text_hash(t) for t in texts[2:5]]
    assert text_hashes(pa.array(texts, pa.large_string())).to_pylist() == [text_hash(t) for t in texts]
    assert text_hashes(pa.chunked_array([], pa.string())).to_pylist() == []


def test_locate_finds_each_query_by_id_and_text():
    import pyarrow as pa

    from router_core.features import locate

    # The cache: part 0 holds a, b (old text of b), c; part 1 holds b's edited text and d.
    keys = pa.table({"query_id": ["a", "b", "c", "b", "d"], "text_hash": ["ha", "hb-old", "hc", "hb-new", "hd"],
                     "part": pa.array([0, 0, 0, 1, 1], pa.int32()), "row": pa.array([0, 1, 2, 0, 1], pa.int32())})
    kept = pa.table({"query_id": ["d", "b", "x", "c", "a2"], "text_hash": ["hd", "hb-new", "hx", "hc-edited", "ha"]})
    got = locate(kept, keys).sort_by("dst").to_pydict()
    assert got == {"dst": [0, 1], "part": [1, 1], "row": [1, 0]}  # x unknown, c edited since, a2 another id
    assert locate(kept, keys.slice(0, 0)).num_rows == 0


def test_auto_dtype_is_bfloat16_only_where_the_shell_found_it_fast_and_the_core_refuses_auto():
    from router_core.config import ExtractConfig
    from router_core.encoders import choose_dtype
    from router_core.errors import ConfigError
    from router_core.extraction import settings_identity

    assert choose_dtype("auto", "cpu", bf16_fast=False) == "float32"  # emulated bfloat16: 25-35x slower
    assert choose_dtype("auto", "cpu", bf16_fast=True) == "bfloat16"
    assert choose_dtype("auto", "cuda:0", bf16_fast=False) == "bfloat16"
    assert choose_dtype("float16", "cpu", bf16_fast=True) == "float16"  # an explicit choice stays
    # Decided once, in the shell (jobs.runtime.concrete_extract): the core never guesses on its own.
    with pytest.raises(ConfigError, match=r"^extract.dtype 'auto' reached the extraction core"):
        settings_identity(ExtractConfig(), "enc", [0])
    assert settings_identity(ExtractConfig(dtype="float32"), "enc", [0])["dtype"] == "float32"


@pytest.mark.parametrize("env,expected", [
    ({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, "float32"),  # acting as the AVX2-only kind
    ({}, None),  # this machine: bfloat16 exactly where its CPU has it natively
])
def test_auto_dtype_follows_what_torch_will_run(env, expected):
    """A fresh process as a run starts: the probe, then the concrete extraction settings."""
    import os
    import subprocess
    import sys

    from router_core.encoders import NATIVE_BF16_FLAGS, this_cpu_flags
    from tests.conftest import REPO

    code = ("from jobs.runtime import concrete_extract; from router_core.config import AppConfig; "
            "print(concrete_extract(AppConfig()).extract.dtype, concrete_extract(AppConfig(extract={'dtype': 'float16'}))"
            ".extract.dtype, concrete_extract(AppConfig(extract={'device': 'cuda'})).extract.dtype)")
    clean = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**clean, **env}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    native = bool(NATIVE_BF16_FLAGS & this_cpu_flags())
    assert r.stdout.split() == [expected or ("bfloat16" if native else "float32"), "float16", "bfloat16"]


def test_memory_estimate_grows_with_the_budgets_and_leaves_gpu_activations_out():
    from types import SimpleNamespace

    from router_core.config import ExtractConfig
    from router_core.extraction import memory_estimate_mb

    conf = SimpleNamespace(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                           head_dim=64, intermediate_size=1536, vocab_size=49152, dtype="float32")
    base = ExtractConfig(dtype="float32")
    est = memory_estimate_mb(conf, base)
    weights_mb = 134.5e6 * 4 / 2**20  # SmolLM2-135M's parameters in float32
    assert est > 1300 + weights_mb
    assert memory_estimate_mb(conf, base.model_copy(update={"token_budget": 16384})) > est
    assert memory_estimate_mb(conf, base.model_copy(update={"prefix_sharing": False})) < est
    # bfloat16 from a float32 checkpoint: both copies of the weights at load, activations in float32
    bf16 = memory_estimate_mb(conf, base.model_copy(update={"dtype": "bfloat16"}))
    assert bf16 - est == pytest.approx(134.5e6 * 2 / 2**20, rel=0.01)
    conf.dtype = "bfloat16"  # a bfloat16 checkpoint loads without converting
    assert memory_estimate_mb(conf, base.model_copy(update={"dtype": "bfloat16"})) == pytest.approx(est - weights_mb / 2, rel=0.01)
    gpu = memory_estimate_mb(conf, base.model_copy(update={"device": "cuda", "dtype": "bfloat16"}))
    assert gpu < 1300 + weights_mb


def test_part_sizer_starts_small_then_follows_the_measured_rate():
    from router_core.extraction import PartSizer

    s = PartSizer(first_rows=8, target_s=60, max_rows=512)
    assert s.next_rows([100] * 1000) == 8  # no rate yet
    s.observe(chars=800, seconds=8.0)  # 100 chars/s: 6,000 chars a part
    assert s.next_rows([100] * 1000) == 60
    assert s.next_rows([1000] * 10 + [10] * 100) == 6  # by characters, not rows
    assert s.next_rows([10**6]) == 1  # one query longer than a part still goes alone
    assert s.next_rows([1] * 10) == 10 and s.next_rows([]) == 0
    s.observe(chars=600, seconds=12.0)  # the node slowed to 50 chars/s: the average moves halfway
    assert s.next_rows([100] * 1000) == 45
    fast = PartSizer(first_rows=8, target_s=60, max_rows=512)
    fast.observe(10**9, 1.0)
    assert fast.next_rows([100] * 1000) == 512  # capped by rows_per_task
