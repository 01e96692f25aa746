"""Reading a features folder back, aligned to a queries table."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .errors import ArtifactError
from .extraction import text_hash
from .storage import Storage, join


@dataclass
class FeatureSet:
    manifest: dict
    columns: dict[str, np.ndarray]  # column -> (n, d) float32, rows in the queries' order
    present: np.ndarray  # (n,) bool: a row with this query's id and current text was found
    n_tokens: np.ndarray  # (n,) int32, 0 where absent
    truncated: np.ndarray  # (n,) bool


def read_manifest(storage: Storage, uri: str) -> dict:
    m_uri = join(uri, "manifest.json")
    if not storage.exists(m_uri):
        raise ArtifactError(f"{uri}: no manifest.json (not a features folder)")
    try:
        manifest = json.loads(storage.read_text(m_uri))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{m_uri}: not valid JSON ({e})") from None
    if manifest.get("kind") != "prefill-features":
        raise ArtifactError(f"{m_uri}: kind is {manifest.get('kind')!r}, expected 'prefill-features'")
    return manifest


def load_features(storage: Storage, uri: str, queries: pa.Table, columns: list[str] | None = None) -> FeatureSet:
    """Features of each query (by id and text hash) for ``columns`` (default: all in the manifest)."""
    manifest = read_manifest(storage, uri)
    cols = list(columns or manifest["columns"])
    unknown = [c for c in cols if c not in manifest["columns"]]
    if unknown:
        raise ArtifactError(f"{uri}: no feature column(s) {', '.join(unknown)} "
                            f"(it has {manifest['columns'][0]} .. {manifest['columns'][-1]})")
    d = int(manifest["feature_dim"])
    qids = queries.column("query_id").to_pylist()
    want = {(q, text_hash(t)): i for i, (q, t) in enumerate(zip(qids, queries.column("text").to_pylist()))}
    n = len(qids)
    out = {c: np.zeros((n, d), np.float32) for c in cols}
    present = np.zeros(n, bool)
    n_tok = np.zeros(n, np.int32)
    trunc = np.zeros(n, bool)
    for part in storage.list_files(join(uri, "parts"), ".parquet"):
        t = storage.read_table(part, columns=["query_id", "text_hash", "n_tokens", "truncated", *cols])
        keys = zip(t.column("query_id").to_pylist(), t.column("text_hash").to_pylist())
        src, dst = [], []
        for j, k in enumerate(keys):
            i = want.get(k)
            if i is not None:
                src.append(j)
                dst.append(i)
        if not src:
            continue
        sel = pa.array(src, pa.int64())
        dst_a = np.array(dst)
        present[dst_a] = True
        n_tok[dst_a] = t.column("n_tokens").take(sel).to_numpy()
        trunc[dst_a] = t.column("truncated").take(sel).to_numpy(zero_copy_only=False)
        for c in cols:
            flat = t.column(c).take(sel).combine_chunks().flatten().to_numpy(zero_copy_only=False)
            out[c][dst_a] = flat.reshape(len(src), d).astype(np.float32)
    return FeatureSet(manifest, out, present, n_tok, trunc)
