"""Prefill extraction: run the encoder over queries and pool every requested hidden state.

No token is generated and the LM head is never run. For each query the output is ``n_tokens``,
``truncated`` and, per (pooling, layer), one float16 vector: ``mean`` over the query's tokens,
the ``last`` token, or ``tail``, the mean over its last ``tail_tokens`` tokens (the end of the
question, past any shared preamble). Layer L is ``hidden_states[L]`` (0 = the embedding output).

Two things keep it fast without changing the answer:
- batches are cut from length-sorted queries by a padded-token budget, so padding is small;
- a prefix shared by many queries (a few-shot preamble, the chat template's system turn) is run
  once and its key/value cache reused: a query's mean is then
  ``(sum over prefix + sum over suffix) / (prefix + suffix tokens)``, and its last token is the
  suffix's last, and its tail adds the prefix's last tokens when the suffix is shorter than the
  tail. Features equal the plain path's within floating-point tolerance.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .config import ExtractConfig
from .errors import ArtifactError

FEATURE_DTYPE = np.float16
BIDIRECTIONAL = {"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "deberta", "deberta-v2",
                 "modernbert"}


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def text_hashes(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``text_hash`` of every value of a string column without nulls, hashed from the Arrow buffer
    (no Python strings: 2-3x faster at a million rows)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks else pa.array([], pa.string())
    if col.null_count:
        raise ValueError("text_hashes: the column holds nulls")
    if not len(col):
        return pa.array([], pa.string())
    col = col.cast(pa.large_string()) if not pa.types.is_large_string(col.type) else col
    off = np.frombuffer(col.buffers()[1], np.int64)[col.offset : col.offset + len(col) + 1]
    data = memoryview(col.buffers()[2])
    sha = hashlib.sha256
    return pa.array([sha(data[a:b]).hexdigest() for a, b in zip(off[:-1].tolist(), off[1:].tolist())], pa.string())


def feature_column(pooling: str, layer: int) -> str:
    return f"{pooling}_{layer:02d}"


def resolve_layers(layers: "str | list[int]", n_hidden: int) -> list[int]:
    """The hidden-state indices asked for ("all" or a list; -1 = the last), checked against the count."""
    out = list(range(n_hidden)) if layers == "all" else [x + n_hidden if -n_hidden <= x < 0 else x for x in layers]
    bad = [x for x in out if not 0 <= x < n_hidden]
    if bad:
        raise ArtifactError(f"extract.layers {bad} out of range: the encoder has hidden states 0..{n_hidden - 1}")
    return out


def settings_identity(cfg: ExtractConfig, encoder_identity: str, layers: list[int]) -> dict:
    """The settings that determine the features' values: the cache key next to the text hash."""
    from .encoders import concrete_dtype

    return {
        "encoder": encoder_identity,
        "dtype": concrete_dtype(cfg),  # "auto" is never an identity
        "max_length": cfg.max_length,
        "truncation_side": cfg.truncation_side,
        "chat_template": cfg.chat_template,
        "pooling": list(cfg.pooling),
        "layers": list(layers),
        **({"tail_tokens": cfg.tail_tokens} if "tail" in cfg.pooling else {}),
    }


def settings_key(identity: dict) -> str:
    import json

    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


# -- planning (pure, no torch) -----------------------------------------------------------------

def budget_batches(lengths: list[int], token_budget: int, max_batch: int, max_padding: float = 1.0) -> list[list[int]]:
    """Indices in batches, longest first, each with (rows x longest) <= token_budget.

    A query longer than the budget gets a batch of its own. A row that would be padded by more
    than ``max_padding`` of the batch's width (and by more than 8 tokens) starts a new batch: in a
    long-tailed corpus a budget-filled batch of one 466-token query and sixteen of 167-300 wasted
    half its slots. 1.0: only the budget and ``max_batch`` cut.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]
        pad = width - lengths[i]
        if cur and ((len(cur) + 1) * width > token_budget or len(cur) >= max_batch
                    or (pad > 8 and pad > max_padding * width)):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def padding_waste(lengths: list[int], batches: list[list[int]]) -> tuple[int, int]:
    """(real tokens, padded slots) of a batching."""
    real = sum(lengths[i] for b in batches for i in b)
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return real, slots


def _lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class PrefixGroup:
    prefix_len: int
    members: list[int]


def prefix_groups(seqs: list[list[int]], min_prefix: int, min_group: int) -> tuple[list[PrefixGroup], list[int]]:
    """Find shared token prefixes worth running once.

    Sequences are sorted lexicographically; runs of neighbours sharing a prefix form candidate
    groups, and each run is split where that saves more tokens ((members - 1) x prefix) than
    keeping it whole. Every member keeps at least one token of its own. Returns the groups and the
    indices of the sequences left to the plain path.
    """
    order = sorted(range(len(seqs)), key=lambda i: seqs[i])
    lcp = [_lcp(seqs[order[k]], seqs[order[k + 1]]) for k in range(len(order) - 1)]
    groups: list[PrefixGroup] = []
    singles: list[int] = []

    def best(lo: int, hi: int) -> tuple[int, list[tuple[int, int, int]]]:
        # Best grouping of order[lo..hi] (inclusive): (tokens saved, [(lo, hi, prefix_len)]).
        # Iterative over a stack of ranges would avoid recursion; depth is bounded by run length.
        n = hi - lo + 1
        if n < min_group:
            return 0, []
        m = min(range(lo, hi), key=lambda k: lcp[k])
        p = min(lcp[m], min(len(seqs[order[k]]) for k in range(lo, hi + 1)) - 1)
        whole = (n - 1) * p if p >= min_prefix else 0
        left, right = best(lo, m), best(m + 1, hi)
        if left[0] + right[0] > whole:
            return left[0] + right[0], left[1] + right[1]
        return (whole, [(lo, hi, p)]) if whole > 0 else (0, [])

    # Split into maximal runs whose neighbours share at least min_prefix tokens, then optimise each.
    start = 0
    for k in range(len(order)):
        if k == len(order) - 1 or lcp[k] < min_prefix:
            saved, chosen = best(start, k) if k - start + 1 <= 900 else _chunked(best, start, k)
            covered = set()
            for lo, hi, p in chosen:
                groups.append(PrefixGroup(p, [order[j] for j in range(lo, hi + 1)]))
                covered.update(range(lo, hi + 1))
            singles.extend(order[j] for j in range(start, k + 1) if j not in covered)
            start = k + 1
    return groups, singles


def _chunked(best, start: int, end: int):
    saved, chosen = 0, []
    for lo in range(start, end + 1, 900):
        s, c = best(lo, min(lo + 899, end))
        saved += s
        chosen += c
    return saved, chosen


# -- the encoder -------------------------------------------------------------------------------

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class PartSizer:
    """How many queries an actor encodes before it writes (commits) a part: about ``target_s``
    seconds of work at the rate it has measured, in characters of query text per second.

    Before any measurement a part is ``first_rows`` queries (small, so the first commit comes
    early on the slowest node and measures the rate); then each part is the longest run of the
    next queries whose characters fit ``rate * target_s``, at least one, at most ``max_rows``. The
    rate is a moving average, so a node that slows down (another job on it) gets smaller parts."""

    def __init__(self, first_rows: int, target_s: float, max_rows: int, smoothing: float = 0.5):
        self.first_rows, self.target_s, self.max_rows, self.smoothing = first_rows, target_s, max_rows, smoothing
        self.rate: float | None = None  # characters per second

    def observe(self, chars: int, seconds: float) -> None:
        if chars <= 0 or seconds <= 0:
            return
        r = chars / seconds
        self.rate = r if self.rate is None else self.smoothing * r + (1 - self.smoothing) * self.rate

    def next_rows(self, lengths: list[int]) -> int:
        """Queries to take from the head of ``lengths`` (characters of each query still to encode)."""
        if not lengths:
            return 0
        cap = min(len(lengths), self.max_rows)
        if self.rate is None:
            return min(cap, self.first_rows)
        budget, used = self.rate * self.target_s, 0
        for k, n in enumerate(lengths[:cap]):
            used += n
            if used > budget:
                return max(k, 1)
        return cap


def memory_estimate_mb(conf, cfg: ExtractConfig, base_mb: float = 1300.0) -> float:
    """Peak resident memory (MiB) of one process encoding with ``cfg``, from the model's config
    (``transformers`` PretrainedConfig of a decoder LM): what an actor should ask the scheduler for.

    The terms: the whole model's weights in the compute dtype (loaded before the unread layers are
    dropped), plus once more in the checkpoint's dtype where it differs (the load converts from
    it); one forward batch of ``token_budget`` slots (every kept hidden state, the MLP's
    intermediate, attention scores of up to ``max_length`` keys per token); the shared-prefix KV
    cache repeated over a suffix batch (``kv_budget_tokens`` + ``token_budget`` tokens, every run layer); the float16
    features of one actor call; and ``base_mb`` for Python, torch and transformers. On a CPU the
    activations count at 4 bytes whatever the dtype (norms and softmax compute in float32: a
    bfloat16 actor measured 3.8 GiB where bfloat16 bytes gave 2.9). On a GPU the forward batch and
    the KV cache are in device memory and are not counted."""
    w = DTYPE_BYTES.get(cfg.dtype, 4)
    # transformers 5 names it dtype (reading its torch_dtype alias warns); 4.x kept torch_dtype as a plain attribute
    named = getattr(conf, "dtype", None) or vars(conf).get("torch_dtype")
    stored = DTYPE_BYTES.get(str(named).removeprefix("torch."), w)
    b = w if cfg.device.startswith("cuda") else 4  # activations and cache
    d, n_layers = conf.hidden_size, conf.num_hidden_layers
    heads = conf.num_attention_heads
    kv_heads = getattr(conf, "num_key_value_heads", None) or heads
    head_dim = getattr(conf, "head_dim", None) or d // heads
    inter = getattr(conf, "intermediate_size", None) or 4 * d
    per_layer = d * heads * head_dim * 2 + d * kv_heads * head_dim * 2 + 3 * d * inter
    params = conf.vocab_size * d + n_layers * per_layer
    weights = params * (w + (stored if stored != w else 0))
    layers = resolve_layers(cfg.layers, n_layers + 1)
    run = min(n_layers, max(layers) + 1)  # decoder layers run (Encoder._trim keeps one past the deepest read)
    t = cfg.token_budget
    keys = min(cfg.max_length, t)
    forward = (run + 1) * t * d * b + 3 * t * inter * b + 2 * heads * t * keys * b + 2 * t * d * 4
    # Each suffix row's cache holds the prefix and its own suffix: rows x prefix <= kv_budget_tokens,
    # rows x suffix <= token_budget.
    kv = (cfg.kv_budget_tokens + t) * run * 2 * kv_heads * head_dim * b if cfg.prefix_sharing else 0
    if cfg.device.startswith("cuda"):  # activations and KV live in GPU memory; the host loads the weights
        forward = kv = 0
    out = cfg.rows_per_task * len(cfg.pooling) * len(layers) * d * 2 * 2  # the call's features, and their Arrow copy
    return base_mb + (weights + forward + kv + out) / 2**20


@dataclass
class ExtractStats:
    queries: int = 0
    tokens: int = 0  # real tokens of all queries (what a plain pass would run)
    computed_tokens: int = 0  # tokens actually run (prefixes once + suffixes)
    padded_slots: int = 0  # slots of all forward batches, padding included
    forward_batches: int = 0
    prefix_groups: int = 0
    seconds: float = 0.0

    def add(self, other: "ExtractStats") -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))

    @property
    def padding_waste(self) -> float:
        run = self.computed_tokens
        return 0.0 if not self.padded_slots else 1 - run / self.padded_slots


@dataclass
class ExtractResult:
    n_tokens: np.ndarray  # (n,) int32
    truncated: np.ndarray  # (n,) bool
    features: dict[str, np.ndarray]  # column -> (n, d) float16; rows of failed queries are zero
    errors: list[str | None]  # per query: None, or why it could not be encoded
    stats: ExtractStats = field(default_factory=ExtractStats)


class Encoder:
    """A loaded encoder LLM (base model, no LM head) and its tokenizer."""

    def __init__(self, cfg: ExtractConfig, model_path: str, revision: str | None = None, trim: bool = True):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from .encoders import concrete_dtype

        self.cfg = cfg
        self.torch = torch
        dtype = getattr(torch, concrete_dtype(cfg))
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path, revision=revision)
            self.model = AutoModel.from_pretrained(model_path, revision=revision, dtype=dtype)
        except OSError as e:
            raise ArtifactError(f"encoder {model_path}: cannot load ({str(e).splitlines()[0]})") from None
        self.model.eval().to(cfg.device)
        self.n_hidden = self.model.config.num_hidden_layers + 1
        self.hidden_size = self.model.config.hidden_size
        self.layers = resolve_layers(cfg.layers, self.n_hidden)
        self.run_layers = self.n_hidden - 1  # decoder layers each forward runs
        if trim:
            self._trim(max(self.layers))
        # A bidirectional encoder (BERT-like) lets every token see the whole query: a shared
        # prefix's states then depend on the suffix, so its cache cannot be reused.
        self.causal = self.model.config.model_type not in BIDIRECTIONAL
        if not self.causal and cfg.prefix_sharing:
            self.cfg = cfg = cfg.model_copy(update={"prefix_sharing": False})
        if cfg.chat_template and not self.tokenizer.chat_template:
            raise ArtifactError(f"encoder {model_path} has no chat template: set extract.chat_template=false")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.columns = [feature_column(p, layer) for p in cfg.pooling for layer in self.layers]
        # transformers 5 names the cache argument ``cache``; 4.x called it ``past_key_values``.
        params = inspect.signature(self.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def _trim(self, deepest: int) -> None:
        """Drop the decoder layers past the deepest hidden state read (layers 8 and 16 of 30: 1.8x
        less compute). One layer past it is kept: the last state a model returns is taken after its
        final norm, so the deepest one read must not be the last. Same features either way
        (tests/integration/test_extraction_core.py)."""
        stack = getattr(self.model, "layers", None)
        if not isinstance(stack, self.torch.nn.ModuleList) or deepest + 1 >= len(stack):
            return
        self.model.layers = stack[: deepest + 1]
        self.model.config.num_hidden_layers = deepest + 1
        if isinstance(getattr(self.model.config, "layer_types", None), list):
            self.model.config.layer_types = self.model.config.layer_types[: deepest + 1]
        self.run_layers = deepest + 1

    # -- tokens ----------------------------------------------------------------------------
    def tokenize(self, texts: list[str]) -> tuple[list[list[int] | None], list[bool], list[str | None]]:
        """Token ids per text (truncated to max_length), truncation flags, and per-text errors.

        The texts go through the fast tokenizer in one call (its batch path runs in parallel);
        should that call fail, each text is tokenized alone so the error lands on its own row."""
        try:
            encoded = self._encode_all(texts)
        except Exception:  # the tokenizer's own errors vary by backend
            encoded = None
        ids_out: list[list[int] | None] = []
        trunc: list[bool] = []
        errors: list[str | None] = []
        for i, t in enumerate(texts):
            try:
                ids, cut = self._cap(*(encoded[i] if encoded is not None else self._encode_all([t])[0]))
            except Exception as e:
                ids, cut, err = None, False, f"tokenizer failed: {type(e).__name__}: {str(e)[:120]}"
            else:
                err = None if ids else "text encodes to zero tokens"
                ids = ids or None
            ids_out.append(ids)
            trunc.append(cut)
            errors.append(err)
        return ids_out, trunc, errors

    def _encode_all(self, texts: list[str]) -> list[tuple[list[int], list[int], list[int]]]:
        """(head, ids, tail) per text: the chat-wrapped query (no head or tail), or the text and the
        tokenizer's own special tokens around it (e.g. [CLS] ... [SEP], kept when the text is cut)."""
        tok = self.tokenizer
        if not texts:
            return []
        if self.cfg.chat_template:
            wrapped = tok.apply_chat_template([[{"role": "user", "content": t}] for t in texts],
                                              add_generation_prompt=True, tokenize=False)
            return [([], ids, []) for ids in tok(wrapped, add_special_tokens=False)["input_ids"]]
        bare = tok(texts, add_special_tokens=False)["input_ids"]
        out = []
        for ids, full in zip(bare, tok(texts, add_special_tokens=True)["input_ids"]):
            h = next((h for h in range(len(full) - len(ids) + 1) if full[h : h + len(ids)] == ids), 0)
            out.append((full[:h], ids, full[h + len(ids):]))
        return out

    def _cap(self, head: list[int], ids: list[int], tail: list[int]) -> tuple[list[int], bool]:
        """(ids, truncated) within max_length, cut on the configured side; [] when the text has no token."""
        if not ids:
            return [], False
        room = max(self.cfg.max_length - len(head) - len(tail), 1)
        cut = len(ids) > room
        if cut:
            ids = ids[-room:] if self.cfg.truncation_side == "left" else ids[:room]
        return [*head, *ids, *tail], cut

    # -- forward passes --------------------------------------------------------------------
    def _forward(self, ids: list[list[int]], past=None, past_len: int = 0):
        """Right-padded forward. Returns hidden states (tuple of (b, s, d)) and lengths."""
        torch = self.torch
        lens = [len(x) for x in ids]
        width = max(lens)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), past_len + width), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[i, : past_len + len(x)] = 1
        kwargs = {self._cache_kwarg: past} if past is not None else {}
        out = self.model(input_ids=input_ids.to(self.cfg.device), attention_mask=mask.to(self.cfg.device),
                         use_cache=past is not None, output_hidden_states=True, **kwargs)
        return out, lens

    def extract(self, texts: list[str], progress: Callable[[int, int], None] | None = None) -> ExtractResult:
        """Features of every text; failures are reported per text, never raised. ``progress(rows,
        tokens)`` is told after each forward batch how many queries (and their tokens) it finished."""
        torch = self.torch
        t0 = time.perf_counter()
        n = len(texts)
        ids, trunc, errors = self.tokenize(texts)
        ok = [i for i in range(n) if ids[i] is not None]
        d = self.hidden_size
        feats = {c: np.zeros((n, d), dtype=FEATURE_DTYPE) for c in self.columns}
        stats = ExtractStats(queries=len(ok), tokens=sum(len(ids[i]) for i in ok))

        groups: list[PrefixGroup] = []
        plain = ok
        if self.cfg.prefix_sharing and len(ok) >= self.cfg.min_prefix_group:
            seqs = [ids[i] for i in ok]
            g, singles = prefix_groups(seqs, self.cfg.min_prefix_tokens, self.cfg.min_prefix_group)
            groups = [PrefixGroup(x.prefix_len, [ok[j] for j in x.members]) for x in g]
            plain = [ok[j] for j in singles]

        with torch.inference_mode():
            # Plain path: length-sorted, budget-cut batches.
            lens = [len(ids[i]) for i in plain]
            for b in budget_batches(lens, self.cfg.token_budget, self.cfg.max_batch_size, self.cfg.max_padding):
                rows = [plain[j] for j in b]
                out, blens = self._forward([ids[r] for r in rows])
                self._pool(out.hidden_states, rows, blens, feats)
                del out  # its hidden states would stay alive through the next batch's forward
                stats.forward_batches += 1
                stats.padded_slots += len(rows) * max(blens)
                stats.computed_tokens += sum(blens)
                if progress is not None:
                    progress(len(rows), sum(blens))
            # Shared prefixes: run once, reuse the KV cache for every member's suffix.
            for g in groups:
                self._extract_group(g, ids, feats, stats, progress)
            if progress is not None and len(ok) < n:  # the failed texts are done too
                progress(n - len(ok), 0)
        stats.prefix_groups = len(groups)
        stats.seconds = time.perf_counter() - t0
        n_tok = np.array([len(x) if x is not None else 0 for x in ids], dtype=np.int32)
        return ExtractResult(n_tok, np.array(trunc, dtype=bool), feats, errors, stats)

    def _pool(self, hidden, rows: list[int], lens: list[int], feats: dict[str, np.ndarray],
              prefix_sum=None, prefix_len: int = 0, prefix_tail=None) -> None:
        """Pool each layer's hidden states of a right-padded batch into ``feats``.

        With a shared prefix, ``prefix_sum[layer]`` is its token sum and ``prefix_tail[layer]``
        holds, at row k, the sum of its last k tokens (k = 0 .. min(tail, prefix)).
        """
        torch = self.torch
        lens_t = torch.tensor(lens, device=hidden[0].device)
        width = hidden[0].shape[1]
        pos = torch.arange(width, device=lens_t.device)[None, :]
        mask = (pos < lens_t[:, None]).unsqueeze(-1)  # (b, s, 1)
        idx = torch.tensor(rows).numpy()
        T = self.cfg.tail_tokens
        if "tail" in self.cfg.pooling:
            tail_mask = (mask & (pos >= lens_t[:, None] - T).unsqueeze(-1))
            from_prefix = (T - lens_t).clamp(min=0, max=prefix_len)  # prefix tokens in each tail
            tail_n = (torch.clamp(lens_t, max=T) + from_prefix).float()[:, None]
        pooled: dict[str, list] = {p: [] for p in self.cfg.pooling}
        for layer in self.layers:
            h = hidden[layer].float()  # (b, s, d)
            if "mean" in pooled:
                s = (h * mask).sum(dim=1)  # (b, d)
                if prefix_sum is not None:
                    s = s + prefix_sum[layer][None, :]
                pooled["mean"].append(s / (lens_t + prefix_len)[:, None].float())
            if "last" in pooled:
                pooled["last"].append(h[torch.arange(len(rows)), lens_t - 1])  # (b, d)
            if "tail" in pooled:
                s = (h * tail_mask).sum(dim=1)
                if prefix_tail is not None:
                    s = s + prefix_tail[layer][from_prefix]
                pooled["tail"].append(s / tail_n)
        # One copy to the host per pooling (a GPU would otherwise stop for every layer's copy).
        for pooling, per_layer in pooled.items():
            host = torch.stack(per_layer).to(getattr(torch, np.dtype(FEATURE_DTYPE).name)).cpu().numpy()
            for layer, x in zip(self.layers, host):
                feats[feature_column(pooling, layer)][idx] = x.astype(FEATURE_DTYPE, copy=False)

    def _extract_group(self, g: PrefixGroup, ids, feats, stats: ExtractStats, progress=None) -> None:
        P = g.prefix_len
        prefix = ids[g.members[0]][:P]
        cache = self._new_cache()
        out, _ = self._forward([prefix], past=cache)  # fills ``cache`` in place
        prefix_sum = {layer: out.hidden_states[layer][0].float().sum(dim=0) for layer in self.layers}
        prefix_tail = None
        if "tail" in self.cfg.pooling:  # row k: sum of the prefix's last k tokens
            torch = self.torch
            prefix_tail = {}
            for layer in self.layers:
                h = out.hidden_states[layer][0].float()[-self.cfg.tail_tokens:].flip(0)
                prefix_tail[layer] = torch.cat([torch.zeros_like(h[:1]), h.cumsum(dim=0)])
        stats.forward_batches += 1
        stats.padded_slots += P
        stats.computed_tokens += P
        suffix_lens = [len(ids[i]) - P for i in g.members]
        # Each suffix row also holds P cached tokens per layer: bound rows by the KV budget too.
        max_rows = max(1, min(self.cfg.max_batch_size, self.cfg.kv_budget_tokens // max(P, 1)))
        for b in budget_batches(suffix_lens, self.cfg.token_budget, max_rows, self.cfg.max_padding):
            rows = [g.members[j] for j in b]
            past = _shared_cache(cache, len(rows))
            out, blens = self._forward([ids[r][P:] for r in rows], past=past, past_len=P)
            self._pool(out.hidden_states, rows, blens, feats, prefix_sum, P, prefix_tail)
            # Freed before the next batch: kept, this batch's hidden states and its whole KV cache
            # (rows x (prefix + suffix) per layer) would live through the next forward, doubling the peak.
            del out, past
            stats.forward_batches += 1
            stats.padded_slots += len(rows) * max(blens)
            stats.computed_tokens += sum(blens)
            if progress is not None:
                progress(len(rows), sum(len(ids[r]) for r in rows))

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)


def _shared_cache(cache, rows: int):
    """A cache for ``rows`` suffixes that all continue ``cache``'s one prefix row, sharing its
    tensors: each layer's keys and values are broadcast views (no copy); the forward's append
    (a concatenation) writes new tensors and leaves the prefix's as they were. Layer objects are
    copied shallowly so their bookkeeping (e.g. a sliding window's token count) carries over."""
    past = copy.copy(cache)
    past.layers = []
    for layer in cache.layers:
        lay = copy.copy(layer)
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            lay.keys = layer.keys.expand(rows, *layer.keys.shape[1:])
            lay.values = layer.values.expand(rows, *layer.values.shape[1:])
        past.layers.append(lay)
    return past
