"""Encoding through the feature cache: what ``extract`` runs, and what ``train``, ``evaluate`` and
``route`` call for the texts a cache lacks. The cache is router_core.features; the actor pool is
jobs.extract_pool. A full cache hit touches neither the encoder nor the folder: nothing is hashed,
loaded or written."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from router_core.config import AppConfig, ExtractConfig
from router_core.encoders import PACKAGED, encoder_fingerprint, resolve_encoder
from router_core.errors import ArtifactError
from router_core.extraction import (ExtractStats, feature_column, memory_estimate_mb, resolve_layers, settings_identity,
                                   settings_key, text_hashes)
from router_core.features import PARTS, Cache, Located, full_hit, load_features, read_manifest, request_of
from router_core.queries import PreparedQueries, prepare_queries
from router_core.storage import Storage, join

from .extract_pool import run_actor_pool
from .common import storage_from
from .runtime import code_version, concrete_extract, default_cache_dir, ensure_ray, ray_get

log = logging.getLogger(__name__)


@dataclass
class ExtractRun:
    out: str
    input_rows: int
    reused: int
    extracted: int
    rejects: list[dict]  # input rows not extracted: failed the checks, or the encoder could not read them
    total_rows: int  # rows the folder holds now
    stats: ExtractStats
    seconds: float
    manifest: dict = field(default_factory=dict)
    actor_peak_rss_mb: float = 0.0  # the largest peak RSS of any actor process
    actor_memory_mb: float = 0.0  # what each actor asked the scheduler for
    located: Located | None = None  # where the accepted queries' features are (for ``route``)

    @property
    def rejected(self) -> int:
        return len(self.rejects)

    def reconciles(self) -> bool:
        return self.input_rows == self.reused + self.extracted + self.rejected


def hash_texts(col: pa.ChunkedArray, min_rows: int = 200_000) -> pa.Array:
    """``text_hashes`` of a column; a large one in parallel Ray tasks when Ray is up (hashing a
    million short texts costs ~0.7 s of one core)."""
    import ray

    n = len(col)
    cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1
    if n < min_rows or cpus < 2:
        return text_hashes(col)
    step = -(-n // cpus)
    task = ray.remote(num_cpus=1)(text_hashes)
    return pa.concat_arrays([ray_get(r) for r in [task.remote(col.slice(i, step)) for i in range(0, n, step)]])


def prepare(storage: Storage, uri: str) -> PreparedQueries:
    return prepare_queries(storage, uri, hash_texts)


def encoder_shape(path: str, ecfg: ExtractConfig) -> tuple[list[int], int, float]:
    """(hidden-state indices read, hidden size, memory an actor needs in MiB) of the encoder at ``path``."""
    from transformers import AutoConfig

    try:
        conf = AutoConfig.from_pretrained(path, revision=ecfg.revision)
    except OSError as e:  # a Hub id the machine cannot reach, or a name the Hub does not have
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise ArtifactError(f"encoder {path}: its config could not be loaded ({first[:160]}); use a packaged encoder "
                            f"({', '.join(PACKAGED)}), a local model folder, or download it into the Hugging Face "
                            "cache (HF_HOME) on a machine that reaches the Hub") from None
    memory = ecfg.actor_memory_mb or memory_estimate_mb(conf, ecfg)
    return resolve_layers(ecfg.layers, conf.num_hidden_layers + 1), conf.hidden_size, memory


def schedulable_memory_mb(memory_mb: float) -> float:
    """``memory_mb``, or the largest node's memory when no node has that much (with a warning: the
    actor would never be scheduled otherwise)."""
    import ray

    nodes = [n.get("Resources", {}).get("memory", 0) / 2**20 for n in ray.nodes() if n.get("Alive")]
    largest = max(nodes, default=0)
    if largest and memory_mb > largest:
        log.warning("extract: an actor needs ~%.0f MiB but the largest node offers %.0f MiB: asking for that; "
                    "lower extract.token_budget or kv_budget_tokens, or set extract.actor_memory_mb", memory_mb, largest)
        return largest
    return memory_mb


def encode(cfg: AppConfig, prepared: PreparedQueries, out: str, hook=None) -> ExtractRun:
    """Features of every accepted query of ``prepared`` in the folder ``out``: cached rows reused,
    the others encoded by the actor pool, each part listed in the manifest once written.
    ``hook(encoder) -> encoder`` wraps each actor's encoder (tests: a slow or stuck one)."""
    t0 = time.perf_counter()
    cfg = concrete_extract(cfg)
    ecfg, storage, kept = cfg.extract, storage_from(cfg), prepared.kept
    rejects = list(prepared.rejects)
    n_in = prepared.queries.num_rows
    fingerprint = encoder_fingerprint(ecfg.encoder, ecfg.revision)
    hit = full_hit(storage, out, kept, ecfg, fingerprint)
    if hit is not None:
        log.info("extract: %d input rows: all %d accepted rows already extracted", n_in, kept.num_rows)
        located, m = hit
        return ExtractRun(out, n_in, kept.num_rows, 0, rejects, m.get("rows", 0), ExtractStats(),
                          time.perf_counter() - t0, m, located=located)
    resolved = resolve_encoder(ecfg.encoder, ecfg.cache_dir or default_cache_dir(), ecfg.revision)
    layers, dim, memory = encoder_shape(resolved.path, ecfg)
    identity = settings_identity(ecfg, resolved.identity, layers)
    header = {"encoder": {"spec": ecfg.encoder, "identity": resolved.identity, "revision": resolved.revision,
                          "fingerprint": fingerprint},
              "request": request_of(ecfg), "columns": [feature_column(p, layer) for p in ecfg.pooling for layer in layers],
              "feature_dim": dim, "feature_dtype": "float16", "key_columns": ["query_id", "text_hash"],
              "code_version": code_version()}
    cache = Cache.open(storage, out, identity, settings_key(identity), header)
    found, todo = cache.lookup(kept)
    log.info("extract: %d input rows: %d already extracted, %d to extract, %d rejected before encoding",
             n_in, kept.num_rows - todo.num_rows, todo.num_rows, len(rejects))
    stats, peak = ExtractStats(), 0.0
    if not todo.num_rows:  # every row cached (an older manifest, or another request): nothing to write
        located = Located.of(cache.old_parts, found)
        return ExtractRun(out, n_in, kept.num_rows, 0, rejects, sum(e["rows"] for _, e in cache.old_parts), stats,
                          time.perf_counter() - t0, cache.manifest, located=located)
    cache.begin()

    def commit(entries: dict) -> None:  # each part as an actor finishes it: it counts from now on
        cache.add_parts({k: v for k, v in entries.items() if k not in cache.manifest["parts"]})

    # Sorting by text puts queries that share a prefix into the same actor call.
    todo = todo.take(pc.sort_indices(todo, [("text", "ascending")]))
    ensure_ray(cfg)
    memory = schedulable_memory_mb(memory)
    log.info("extract: %d rows over %d actor(s), each asking for %.0f MiB", todo.num_rows, ecfg.actors, memory)
    results = run_actor_pool(cfg, todo, resolved.identity, join(out, PARTS), storage, commit, memory, hook)
    errs = results.column("error").to_pylist()
    for qid, err in zip(results.column("query_id").to_pylist(), errs):
        if err is not None:
            rejects.append(dict(source=prepared.src, row=None, query_id=qid, column="text", reason=err))
    ok = pa.array([e is None for e in errs])
    stats.queries = extracted = int(pc.sum(ok).as_py() or 0)
    stats.tokens = int(pc.sum(results.filter(ok).column("n_tokens")).as_py() or 0)
    calls = results.group_by("call_id").aggregate([(c, "max") for c in (
        "call_seconds", "call_computed_tokens", "call_padded_slots", "call_prefix_groups", "call_peak_rss_mb")])
    peak = float(pc.max(calls.column("call_peak_rss_mb_max")).as_py())
    stats.computed_tokens = int(pc.sum(calls.column("call_computed_tokens_max")).as_py())
    stats.padded_slots = int(pc.sum(calls.column("call_padded_slots_max")).as_py())
    stats.prefix_groups = int(pc.sum(calls.column("call_prefix_groups_max")).as_py())
    stats.seconds = float(pc.sum(calls.column("call_seconds_max")).as_py())
    located = cache.finish(kept, found)
    run = ExtractRun(out, n_in, kept.num_rows - todo.num_rows, extracted, rejects, cache.manifest["rows"], stats,
                     time.perf_counter() - t0, cache.manifest, peak, memory, located)
    if not run.reconciles():
        raise RuntimeError(f"extract counts do not reconcile: {run}")  # a bug, not user input
    return run


def semantic_config(cfg: AppConfig) -> AppConfig:
    """The extraction settings of the sentence encoder: its last layer, mean-pooled, no template."""
    b = cfg.baselines
    ext = cfg.extract.model_copy(update={
        "encoder": b.semantic_encoder, "revision": None, "chat_template": False, "pooling": ["mean"], "layers": [-1],
        "max_length": b.semantic_max_length, "truncation_side": "left", "prefix_sharing": False})
    return cfg.model_copy(update={"extract": ext})


def semantic_embeddings(cfg: AppConfig, data: str, uri: str, queries: pa.Table) -> tuple[np.ndarray, np.ndarray, dict]:
    """(n, d) sentence embeddings of ``queries`` (computed for the texts the cache lacks), presence, manifest."""
    storage = storage_from(cfg)
    run = encode(semantic_config(cfg), prepare(storage, data), uri)
    log.info("semantic embeddings in %s: %d reused, %d computed (%.0f s)", uri, run.reused, run.extracted, run.seconds)
    fman = read_manifest(storage, uri)
    col = fman["columns"][0]
    fs = load_features(storage, uri, queries, [col])
    return fs.columns[col], fs.present, fman
