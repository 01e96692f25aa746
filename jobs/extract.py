"""Stage ``extract``: prefill features of every query, by a Ray Data actor pool.

The output folder is also the cache. Its ``manifest.json`` fixes the settings (encoder identity,
dtype, max_length, template, layers, pooling); each part file holds rows keyed by
(query_id, text_hash). A rerun extracts only rows not already present, so a rerun on the same
corpus extracts nothing and a job killed half way resumes. Each actor call writes one part file
atomically, named after its rows, so a retried task rewrites the same file.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from router_core import schemas
from router_core.config import AppConfig, ExtractConfig
from router_core.dataset import conform, table_uri
from router_core.encoders import resolve_encoder
from router_core.errors import ArtifactError, DataError
from router_core.extraction import (
    ExtractStats,
    feature_column,
    resolve_layers,
    settings_identity,
    settings_key,
    text_hashes,
)
from router_core.features import listed_parts, locate, part_digests, read_manifest, verify_part
from router_core.storage import Storage, join
from router_core.validation import check_queries

from .common import storage_from
from .runtime import code_version, default_cache_dir, ensure_ray, ray_get, user_error

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PARTS = "parts"
REJECTS = "rejects.parquet"


def read_queries(storage: Storage, uri: str) -> tuple[pa.Table, str]:
    """A dataset folder (holding queries.parquet or queries/), a Parquet file, or a folder of parts."""
    try:
        src = table_uri(storage, uri, "queries")
    except DataError:
        src = uri
    # A bulk query set needs only query_id and text; split and task are the dataset's business.
    table, warnings = conform(storage.read_table(src), schemas.QUERIES, src, optional=("split", "task"))
    for w in warnings:
        log.warning(w)
    if table.num_rows == 0:
        raise DataError(f"{src}: holds no rows")
    return table, src


def read_feature_keys(storage: Storage, out: str, parts: dict[str, dict] | None = None, first: int = 0) -> pa.Table:
    """(query_id, text_hash, part, row) of every row in the parts the folder's manifest lists (or
    ``parts``): ``part`` numbers the parts in their given order from ``first``, ``row`` is the row in it."""
    if parts is None:
        parts = listed_parts(read_manifest(storage, out), out)
    tables = []
    for j, (uri, entry) in enumerate(parts.items(), first):
        t = storage.read_table(uri, columns=["query_id", "text_hash"])
        verify_part(t, entry["sha256"], uri)
        tables.append(t.append_column("part", pa.array(np.full(t.num_rows, j, np.int32)))
                      .append_column("row", pa.array(np.arange(t.num_rows, dtype=np.int32))))
    if not tables:
        return pa.table({"query_id": pa.array([], pa.string()), "text_hash": pa.array([], pa.string()),
                         "part": pa.array([], pa.int32()), "row": pa.array([], pa.int32())})
    return pa.concat_tables(tables)


@dataclass
class Located:
    """Where each accepted query's features are: ``kept`` row ``dst`` is row ``row`` of ``parts[part]``."""

    parts: list[tuple[str, dict]]  # (part URI, manifest entry: rows, sha256 per column)
    dst: np.ndarray
    part: np.ndarray
    row: np.ndarray


def _surviving_parts(storage: Storage, out: str, old: dict | None) -> dict[str, dict]:
    """The parts of an earlier run that still count: listed in its manifest and present. Part files
    the manifest does not list (written by a run killed before it recorded them) are deleted: their
    rows are extracted again."""
    listed = {name: e for name, e in (old or {}).get("parts", {}).items()}
    on_disk = {uri.rsplit("/", 1)[1]: uri for uri in storage.list_files(join(out, PARTS), ".parquet")}
    for name in sorted(set(listed) - set(on_disk)):
        log.warning("extract: %s is listed in the manifest but missing; its rows will be extracted again", name)
        del listed[name]
    for name in sorted(set(on_disk) - set(listed)):
        log.warning("extract: %s is not in the manifest (left by an interrupted run); deleted", name)
        storage.delete(on_disk[name])
    return listed


def write_features(table: pa.Table, where) -> None:
    """A features part: keys compressed; vectors stored plain (float16 states barely compress, and
    decompressing them costs more than reading them)."""
    codec = {f.name: "none" if pa.types.is_fixed_size_binary(f.type) else "zstd" for f in table.schema}
    pq.write_table(table, where, compression=codec, use_dictionary=False)


def part_name(qids: list[str], hashes: list[str]) -> str:
    h = hashlib.sha256()
    for q, t in sorted(zip(qids, hashes)):
        h.update(q.encode("utf-8", "surrogatepass") + b"\0" + t.encode() + b"\n")
    return f"part-{h.hexdigest()[:20]}.parquet"


class ExtractActor:
    """One encoder per actor, loaded once; each call encodes a block and writes its part file."""

    def __init__(self, ecfg: dict, cache_dir: str | None, identity: str, parts_uri: str, storage: dict,
                 threads: int | None, actors: int = 1):
        import torch

        from router_core.extraction import Encoder

        # Ray sets OMP_NUM_THREADS=1 for a fractional-CPU actor; an encoder wants the cores it shares.
        self.threads = threads or max(1, (os.cpu_count() or 1) // max(1, actors))
        self.torch = torch
        self.cfg = ExtractConfig.model_validate(ecfg)
        # No cache_dir configured: this node's own cache, never a path of the driver's machine.
        resolved = resolve_encoder(self.cfg.encoder, cache_dir or default_cache_dir(), self.cfg.revision)
        if resolved.identity != identity:
            raise ArtifactError(f"encoder on this node is {resolved.identity}, the job expects {identity}")
        self.encoder = Encoder(self.cfg, resolved.path, resolved.revision)
        self.parts_uri = parts_uri
        self.storage = Storage(**storage)

    def __call__(self, batch: pa.Table) -> pa.Table:
        # OpenMP's thread count is per calling thread, and Ray Data calls from another thread
        # than __init__'s: set it here, or matmuls run on one core (measured: 1.9x slower).
        self.torch.set_num_threads(self.threads)
        qids = batch.column("query_id").to_pylist()
        texts = batch.column("text").to_pylist()
        hashes = batch.column("text_hash").to_pylist()
        res = self.encoder.extract(texts)
        ok = np.array([e is None for e in res.errors])
        if ok.any():
            idx = np.flatnonzero(ok)
            d = self.encoder.hidden_size
            cols = {
                "query_id": pa.array([qids[i] for i in idx], pa.string()),
                "text_hash": pa.array([hashes[i] for i in idx], pa.string()),
                "n_tokens": pa.array(res.n_tokens[idx], pa.int32()),
                "truncated": pa.array(res.truncated[idx], pa.bool_()),
            }
            for c in self.encoder.columns:
                cols[c] = schemas.encode_vectors(res.features[c][idx])
            table = pa.table(cols, schema=schemas.features_schema(self.encoder.columns, d))
            buf = io.BytesIO()
            write_features(table, buf)
            name = part_name([qids[i] for i in idx], [hashes[i] for i in idx])
            self.storage.write_bytes(join(self.parts_uri, name), buf.getvalue())
            part = json.dumps({"name": name, "rows": int(ok.sum()), "sha256": part_digests(table)})
        else:
            part = None
        s = res.stats
        n = len(qids)
        return pa.table({
            "query_id": qids,
            "error": res.errors,
            "n_tokens": res.n_tokens,
            "truncated": res.truncated,
            # Per-call figures, repeated on each row; the driver reads them once per call.
            "call_id": [part_name(qids, hashes)] * n,
            "call_part": pa.array([part] * n, pa.string()),  # the part written (JSON: name, rows, digests)
            "call_seconds": [s.seconds] * n,
            "call_computed_tokens": [s.computed_tokens] * n,
            "call_padded_slots": [s.padded_slots] * n,
            "call_prefix_groups": [s.prefix_groups] * n,
            "call_peak_rss_mb": [_peak_rss_mb()] * n,
        })


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class ExtractRun:
    out: str
    input_rows: int
    reused: int
    extracted: int
    rejected: int
    total_rows: int
    stats: ExtractStats
    seconds: float
    manifest: dict = field(default_factory=dict)
    actor_peak_rss_mb: float = 0.0  # the largest peak RSS of any actor process
    located: Located | None = None  # where the accepted queries' features are (for ``route``)

    def reconciles(self) -> bool:
        return self.input_rows == self.reused + self.extracted + self.rejected


@dataclass
class PreparedQueries:
    """A queries table read and checked once: accepted rows keyed by (query_id, text_hash)."""

    queries: pa.Table  # conformed, every input row
    src: str
    keep: list[int]  # accepted row indices
    rejects: list[dict]
    kept: pa.Table  # query_id, text, text_hash of the accepted rows, in input order


def prepare_queries(storage: Storage, uri: str) -> PreparedQueries:
    queries, src = read_queries(storage, uri)
    keep, rejects, _ = check_queries(queries, src, check_split=False)  # only id and text matter here
    kept = queries.select(["query_id", "text"])
    if len(keep) < queries.num_rows:
        kept = kept.take(pa.array(keep, pa.int64()))
    kept = kept.append_column("text_hash", hash_texts(kept.column("text")))
    return PreparedQueries(queries, src, keep, rejects, kept)


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


def extract_config_for(fman: dict, base: ExtractConfig) -> ExtractConfig:
    """The extraction settings that reproduce a features folder (its identity fields), keeping the
    machine-dependent fields (device, batch sizes, actors) of ``base``."""
    s = fman["settings"]
    upd = {"encoder": fman["encoder"]["spec"], "revision": fman["encoder"].get("revision"), "dtype": s["dtype"],
           "max_length": s["max_length"], "truncation_side": s["truncation_side"],
           "chat_template": s["chat_template"], "pooling": s["pooling"], "layers": s["layers"]}
    if "tail_tokens" in s:
        upd["tail_tokens"] = s["tail_tokens"]
    return base.model_copy(update=upd)


def config_for_cache(cfg: AppConfig, storage: Storage, uri: str, fallback: str | None = None) -> AppConfig:
    """``cfg`` with the extraction settings the features folder ``uri`` was written with, else those
    of the folder ``fallback`` (e.g. a model's training features), else ``cfg`` unchanged."""
    for u in (uri, fallback):
        if u and storage.exists(join(u, MANIFEST)):
            return cfg.model_copy(update={"extract": extract_config_for(read_manifest(storage, u), cfg.extract)})
    return cfg


def run_extract(cfg: AppConfig, data_uri: str, out: str, prepared: PreparedQueries | None = None) -> ExtractRun:
    t0 = time.perf_counter()
    ecfg = cfg.extract
    storage = storage_from(cfg)
    p = prepared or prepare_queries(storage, data_uri)
    queries, src, kept = p.queries, p.src, p.kept
    rejects = list(p.rejects)
    cache_dir = ecfg.cache_dir or default_cache_dir()
    resolved = resolve_encoder(ecfg.encoder, cache_dir, ecfg.revision)
    layers, dim = _encoder_shape(resolved.path, ecfg)
    identity = settings_identity(ecfg, resolved.identity, layers)
    key = settings_key(identity)
    manifest_uri = join(out, MANIFEST)
    old = None
    if storage.exists(manifest_uri):
        old = read_manifest(storage, out)
        if old.get("settings_key") != key:
            raise ArtifactError(
                f"{out}: holds features of other settings ({_diff(old.get('settings', {}), identity)}); "
                "write to a new folder")
    parts = _surviving_parts(storage, out, old)
    old_parts = list(listed_parts({"parts": parts}, out).items())
    have = read_feature_keys(storage, out, dict(old_parts))
    found = locate(kept, have)
    missing = np.ones(kept.num_rows, bool)
    missing[found.column("dst").to_numpy()] = False
    todo = kept.filter(pa.array(missing)) if found.num_rows else kept
    reused = kept.num_rows - todo.num_rows
    log.info("extract: %d input rows: %d already extracted, %d to extract, %d rejected before encoding",
             queries.num_rows, reused, todo.num_rows, len(rejects))

    manifest = {
        "kind": "prefill-features",
        "settings_key": key,
        "settings": identity,
        "encoder": {"spec": ecfg.encoder, "identity": resolved.identity, "revision": resolved.revision},
        "columns": [feature_column(p, layer) for p in ecfg.pooling for layer in layers],
        "feature_dim": dim,
        "feature_dtype": "float16",
        "key_columns": ["query_id", "text_hash"],
        "code_version": code_version(),
        "complete": False,
        "parts": parts,  # name -> rows and SHA-256 per column; only listed parts count
    }
    storage.write_text(manifest_uri, json.dumps(manifest, indent=2))

    def record(batch: pa.Table) -> None:  # each finished actor call: its part counts from now on
        new = {json.loads(p)["name"]: json.loads(p) for p in set(batch.column("call_part").to_pylist()) if p}
        if new:
            parts.update({name: {"rows": e["rows"], "sha256": e["sha256"]} for name, e in new.items()})
            storage.write_text(manifest_uri, json.dumps(manifest, indent=2))

    stats = ExtractStats()
    extracted = 0
    actor_peak_rss_mb = 0.0
    if todo.num_rows:
        # Sorting by text puts queries that share a prefix into the same actor call.
        todo = todo.take(pa.compute.sort_indices(todo, [("text", "ascending")]))
        results = _run_actor_pool(cfg, todo, ecfg.cache_dir, resolved.identity, join(out, PARTS), storage, record)
        errs = results.column("error").to_pylist()
        for qid, err in zip(results.column("query_id").to_pylist(), errs):
            if err is not None:
                rejects.append(dict(source=src, row=None, query_id=qid, column="text", reason=err))
        extracted = sum(e is None for e in errs)
        stats.queries = extracted
        ok_mask = pa.array([e is None for e in errs])
        stats.tokens = int(pa.compute.sum(results.filter(ok_mask).column("n_tokens")).as_py() or 0)
        calls = results.group_by("call_id").aggregate([
            ("call_seconds", "max"), ("call_computed_tokens", "max"), ("call_padded_slots", "max"),
            ("call_prefix_groups", "max"), ("call_peak_rss_mb", "max")])
        actor_peak_rss_mb = float(pa.compute.max(calls.column("call_peak_rss_mb_max")).as_py())
        stats.computed_tokens = int(pa.compute.sum(calls.column("call_computed_tokens_max")).as_py())
        stats.padded_slots = int(pa.compute.sum(calls.column("call_padded_slots_max")).as_py())
        stats.prefix_groups = int(pa.compute.sum(calls.column("call_prefix_groups_max")).as_py())
        stats.seconds = float(pa.compute.sum(calls.column("call_seconds_max")).as_py())

    rej_uri = join(out, REJECTS)
    if rejects:
        storage.write_table(schemas.rejects_table(rejects), rej_uri)
    elif storage.exists(rej_uri):
        storage.delete(rej_uri)
    total = have.num_rows + extracted  # new rows are pairs the folder did not hold
    seen = {uri for uri, _ in old_parts}
    new_parts = [(uri, e) for uri, e in listed_parts({"parts": parts}, out).items() if uri not in seen]
    if new_parts:
        found = pa.concat_tables([found, locate(kept, read_feature_keys(storage, out, dict(new_parts), len(old_parts)))])
    located = Located(old_parts + new_parts, found.column("dst").to_numpy(), found.column("part").to_numpy(),
                      found.column("row").to_numpy())
    manifest.update(complete=True, rows=total, updated_unix=int(time.time()))
    storage.write_text(manifest_uri, json.dumps(manifest, indent=2))
    run = ExtractRun(out, queries.num_rows, reused, extracted, len(rejects), total, stats,
                     time.perf_counter() - t0, manifest, actor_peak_rss_mb, located)
    if not run.reconciles():
        raise RuntimeError(f"extract counts do not reconcile: {run}")  # a bug, not user input
    return run


def _run_actor_pool(cfg: AppConfig, todo: pa.Table, cache_dir: str | None, identity: str, parts_uri: str,
                    storage: Storage, on_result=None) -> pa.Table:
    ray = ensure_ray(cfg)
    ecfg = cfg.extract
    k = ecfg.rows_per_task
    blocks = [todo.slice(i, k) for i in range(0, todo.num_rows, k)]
    ds = ray.data.from_arrow(blocks)
    threads = ecfg.torch_threads
    out = ds.map_batches(
        ExtractActor,
        fn_constructor_kwargs=dict(ecfg=ecfg.model_dump(), cache_dir=cache_dir, identity=identity,
                                   parts_uri=parts_uri,
                                   storage=storage.settings(),
                                   threads=threads, actors=ecfg.actors),
        batch_size=k,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=ecfg.actors),
        num_cpus=ecfg.actor_num_cpus,
        num_gpus=ecfg.actor_num_gpus or None,
        resources=ecfg.actor_resources or None,
    )
    results = []
    try:
        for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
            if on_result is not None:
                on_result(batch)
            results.append(batch)
    except Exception as e:  # noqa: BLE001 - an actor's user-facing error, as one line
        err = user_error(e)
        if err is None or err is e:
            raise
        raise err from None
    return pa.concat_tables(results)


def _encoder_shape(path: str, ecfg: ExtractConfig) -> tuple[list[int], int]:
    from transformers import AutoConfig

    conf = AutoConfig.from_pretrained(path, revision=ecfg.revision)
    return resolve_layers(ecfg.layers, conf.num_hidden_layers + 1), conf.hidden_size


def _diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys) or "unknown"


def print_extract(run: ExtractRun) -> None:
    s = run.stats
    rate = s.tokens / s.seconds if s.seconds else 0.0
    print(f"extracted {run.out}")
    print(f"  rows:   {run.input_rows} input = {run.reused} reused + {run.extracted} extracted"
          f" + {run.rejected} rejected; folder now holds {run.total_rows} rows")
    if run.extracted:
        print(f"  tokens: {s.tokens} query tokens, {s.computed_tokens} computed after prefix sharing"
              f" ({s.prefix_groups} shared prefixes), padding waste {100 * s.padding_waste:.1f}%")
        print(f"  speed:  {s.seconds:.1f} s in encoder calls, {rate:,.0f} query tokens/s;"
              f" {run.seconds:.1f} s wall")
    if run.rejected:
        print(f"  rejects: {join(run.out, REJECTS)}")
