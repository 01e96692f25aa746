"""The feature cache: a features folder, its lookup, its reads and its commits.

A folder holds ``manifest.json`` (the settings that fix the values: encoder identity, dtype,
max_length, template, layers, pooling; and the parts that count, each with its rows and a SHA-256
per column) and ``parts/part-*.parquet``, rows keyed by (query_id, text_hash). Only listed parts
count: a part is written first and listed after, so a killed writer leaves at most an unlisted
file, which the next writer deletes and whose rows it extracts again.

- lookup: ``full_hit`` (every query cached, without touching the encoder), ``Cache.lookup``;
- read: ``load_features`` (aligned to a queries table), ``Located`` (where each query's row is);
- commit: ``Cache.begin``, ``Cache.add_parts`` (after each part is written), ``Cache.finish``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .config import ExtractConfig
from .errors import ArtifactError
from .extraction import text_hashes
from .schemas import decode_vectors
from .storage import Storage, join

log = logging.getLogger(__name__)

MANIFEST, PARTS, REJECTS = "manifest.json", "parts", "rejects.parquet"
KIND = "prefill-features"


@dataclass
class FeatureSet:
    manifest: dict
    columns: dict[str, np.ndarray]  # column -> (n, d) float32, rows in the queries' order
    present: np.ndarray  # (n,) bool: a row with this query's id and current text was found
    n_tokens: np.ndarray  # (n,) int32, 0 where absent
    truncated: np.ndarray  # (n,) bool


def column_digest(col: pa.Array | pa.ChunkedArray) -> str:
    """SHA-256 of a column's values, independent of how Arrow or Parquet laid them out."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    h = hashlib.sha256(str(col.type).encode())
    if pa.types.is_fixed_size_binary(col.type):
        w = col.type.byte_width
        h.update(memoryview(col.buffers()[1])[col.offset * w : (col.offset + len(col)) * w])
    elif pa.types.is_string(col.type):
        off = np.frombuffer(col.buffers()[1], np.int32)[col.offset : col.offset + len(col) + 1]
        h.update((off - off[0]).tobytes())
        h.update(memoryview(col.buffers()[2])[off[0] : off[-1]] if len(col) else b"")
    else:
        h.update(np.ascontiguousarray(col.to_numpy(zero_copy_only=False)).tobytes())
    return h.hexdigest()


def part_digests(table: pa.Table) -> dict[str, str]:
    return {name: column_digest(table.column(name)) for name in table.column_names}


def verify_part(table: pa.Table, expected: dict[str, str], uri: str) -> None:
    """Every column read must have the digest the manifest recorded when the part was written."""
    for name in table.column_names:
        if name not in expected:
            raise ArtifactError(f"{uri}: column {name} has no digest in the features manifest")
        if column_digest(table.column(name)) != expected[name]:
            raise ArtifactError(f"{uri}: column {name} does not match its SHA-256 in the features manifest "
                                "(changed after it was written); re-extract into a new folder")


def listed_parts(manifest: dict, uri: str) -> dict[str, dict]:
    """part file URI -> its manifest entry (rows, sha256 per column): the parts that count."""
    return {join(uri, PARTS, name): entry for name, entry in sorted(manifest["parts"].items())}


def read_manifest(storage: Storage, uri: str) -> dict:
    m_uri = join(uri, MANIFEST)
    if not storage.exists(m_uri):
        raise ArtifactError(f"{uri}: no manifest.json (not a features folder)")
    try:
        manifest = json.loads(storage.read_text(m_uri))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{m_uri}: not valid JSON ({e})") from None
    if manifest.get("kind") != KIND:
        raise ArtifactError(f"{m_uri}: kind is {manifest.get('kind')!r}, expected 'prefill-features'")
    if not isinstance(manifest.get("parts"), dict):
        raise ArtifactError(f"{m_uri}: lists no parts with their digests (written by an older version); "
                            "re-extract into a new folder")
    return manifest


def locate(kept: pa.Table, keys: pa.Table) -> pa.Table:
    """(dst, part, row) of the ``kept`` rows found in ``keys``: ``kept`` row ``dst`` has the same
    (query_id, text_hash) as ``keys`` row (part, row)."""
    empty = pa.table({"dst": pa.array([], pa.int64()), "part": pa.array([], pa.int32()),
                      "row": pa.array([], pa.int32())})
    if not keys.num_rows or not kept.num_rows:
        return empty
    # By id first (one hash table, 3x cheaper than a two-key join); an id whose first row in the
    # cache holds another text (an edited query) is looked up again by both keys.
    at = pc.index_in(kept.column("query_id"), value_set=keys.column("query_id"))
    found = at.is_valid().to_numpy(zero_copy_only=False)
    pos = at.fill_null(0).to_numpy(zero_copy_only=False)
    same = found & pc.equal(kept.column("text_hash"), keys.column("text_hash").take(pos)).to_numpy(
        zero_copy_only=False)
    dst = np.flatnonzero(same)
    out = pa.table({"dst": pa.array(dst), "part": keys.column("part").take(pos[dst]),
                    "row": keys.column("row").take(pos[dst])})
    other = np.flatnonzero(found & ~same)
    if len(other):
        idx = kept.select(["query_id", "text_hash"]).take(other).append_column("dst", pa.array(other))
        again = keys.join(idx, keys=["query_id", "text_hash"], join_type="inner")
        out = pa.concat_tables([out, again.select(["dst", "part", "row"]).cast(empty.schema)])
    return out


def load_features(storage: Storage, uri: str, queries: pa.Table, columns: list[str] | None = None) -> FeatureSet:
    """Features of each query (by id and text hash) for ``columns`` (default: all in the manifest)."""
    manifest = read_manifest(storage, uri)
    cols = list(columns or manifest["columns"])
    unknown = [c for c in cols if c not in manifest["columns"]]
    if unknown:
        raise ArtifactError(f"{uri}: no feature column(s) {', '.join(unknown)} "
                            f"(it has {manifest['columns'][0]} .. {manifest['columns'][-1]})")
    d = int(manifest["feature_dim"])
    n = queries.num_rows
    want = pa.table({"query_id": queries.column("query_id"), "text_hash": text_hashes(queries.column("text"))})
    out = {c: np.zeros((n, d), np.float32) for c in cols}
    present = np.zeros(n, bool)
    n_tok = np.zeros(n, np.int32)
    trunc = np.zeros(n, bool)
    for part, entry in listed_parts(manifest, uri).items():
        if not storage.exists(part):
            raise ArtifactError(f"{part}: listed in the features manifest but missing; run extract on these "
                                "queries again to restore its rows")
        t = storage.read_table(part, columns=["query_id", "text_hash", "n_tokens", "truncated", *cols])
        verify_part(t, entry["sha256"], part)
        keys = t.select(["query_id", "text_hash"]).append_column("part", pa.array(np.zeros(t.num_rows, np.int32)))
        found = locate(want, keys.append_column("row", pa.array(np.arange(t.num_rows, dtype=np.int32))))
        if not found.num_rows:
            continue
        sel = found.column("row")
        dst_a = found.column("dst").to_numpy()
        present[dst_a] = True
        n_tok[dst_a] = t.column("n_tokens").take(sel).to_numpy()
        trunc[dst_a] = t.column("truncated").take(sel).to_numpy(zero_copy_only=False)
        for c in cols:
            try:
                out[c][dst_a] = decode_vectors(t.column(c).take(sel), d)
            except ValueError as e:
                raise ArtifactError(f"{part}: column {c}: {e}") from None
    return FeatureSet(manifest, out, present, n_tok, trunc)


# -- lookup -----------------------------------------------------------------------------------


def read_feature_keys(storage: Storage, parts: dict[str, dict], first: int = 0) -> pa.Table:
    """(query_id, text_hash, part, row) of every row of ``parts`` (URI -> manifest entry): ``part``
    numbers the parts in their given order from ``first``, ``row`` is the row in it."""
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

    @classmethod
    def of(cls, parts: list[tuple[str, dict]], found: pa.Table) -> "Located":
        return cls(parts, found.column("dst").to_numpy(), found.column("part").to_numpy(),
                   found.column("row").to_numpy())


def request_of(ecfg: ExtractConfig) -> dict:
    """The identity fields of an extraction config as the user gave them (``layers`` may be "all")."""
    keys = ["encoder", "revision", "dtype", "max_length", "truncation_side", "chat_template", "pooling", "layers"]
    if "tail" in ecfg.pooling:
        keys.append("tail_tokens")
    return {k: getattr(ecfg, k) for k in keys}


def full_hit(storage: Storage, out: str, kept: pa.Table, ecfg: ExtractConfig,
             fingerprint: str | None) -> tuple[Located, dict] | None:
    """Where every ``kept`` query is, if the folder holds them all under these settings as asked and
    the same encoder files (``fingerprint``, see encoders.encoder_fingerprint): then nothing needs
    the encoder, and nothing is written. (Where they are, the folder's manifest); None when anything
    is missing or uncertain."""
    if fingerprint is None or not storage.exists(join(out, MANIFEST)):
        return None
    m = read_manifest(storage, out)
    if m.get("request") != request_of(ecfg) or m["encoder"].get("fingerprint") != fingerprint:
        return None
    parts = listed_parts(m, out)
    if not set(parts) <= set(storage.list_files(join(out, PARTS), ".parquet")):
        return None  # a listed part is gone: the writer path restores its rows
    found = locate(kept, read_feature_keys(storage, parts))
    return (Located.of(list(parts.items()), found), m) if found.num_rows == kept.num_rows else None


# -- commit -----------------------------------------------------------------------------------


def write_part(table: pa.Table) -> bytes:
    """A part file's bytes: keys zstd-compressed, vector columns stored raw (float16 states barely
    compress, and decompressing them costs more than reading them)."""
    codec = {f.name: "none" if pa.types.is_fixed_size_binary(f.type) else "zstd" for f in table.schema}
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=codec, use_dictionary=False)
    return buf.getvalue()


def part_name(qids: list[str], hashes: list[str]) -> str:
    """Named after its rows, so a retried write of the same rows rewrites the same file."""
    h = hashlib.sha256()
    for q, t in sorted(zip(qids, hashes)):
        h.update(q.encode("utf-8", "surrogatepass") + b"\0" + t.encode() + b"\n")
    return f"part-{h.hexdigest()[:20]}.parquet"


def extract_config_for(fman: dict, base: ExtractConfig) -> ExtractConfig:
    """The extraction settings that reproduce a features folder (its identity fields), keeping the
    machine-dependent fields (device, batch sizes, actors) of ``base``: the request it recorded, as
    given (so a full hit needs no encoder), else its resolved settings."""
    if "request" in fman:
        return base.model_copy(update=fman["request"])
    s = fman["settings"]
    upd = {"encoder": fman["encoder"]["spec"], "revision": fman["encoder"].get("revision"), "dtype": s["dtype"],
           "max_length": s["max_length"], "truncation_side": s["truncation_side"],
           "chat_template": s["chat_template"], "pooling": s["pooling"], "layers": s["layers"]}
    if "tail_tokens" in s:
        upd["tail_tokens"] = s["tail_tokens"]
    return base.model_copy(update=upd)


def settings_for(storage: Storage, base: ExtractConfig, *uris: str | None) -> ExtractConfig:
    """``base`` with the settings of the first of ``uris`` that is a features folder (a cache's own
    settings; e.g. a model's training features for a new cache), else ``base`` unchanged."""
    for u in uris:
        if u and storage.exists(join(u, MANIFEST)):
            return extract_config_for(read_manifest(storage, u), base)
    return base


def _diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys) or "unknown"


@dataclass
class Cache:
    """A features folder opened for writing with settings ``identity`` (refused if it holds others)."""

    storage: Storage
    out: str
    manifest: dict
    old_parts: list[tuple[str, dict]] = field(default_factory=list)  # listed parts that are there
    stray: list[str] = field(default_factory=list)  # part files no manifest lists (an interrupted writer's)

    @classmethod
    def open(cls, storage: Storage, out: str, identity: dict, key: str, header: dict) -> "Cache":
        """``header``: the manifest's descriptive fields (encoder, columns, feature_dim, ...)."""
        old = read_manifest(storage, out) if storage.exists(join(out, MANIFEST)) else None
        if old is not None and old.get("settings_key") != key:
            raise ArtifactError(f"{out}: holds features of other settings "
                                f"({_diff(old.get('settings', {}), identity)}); write to a new folder")
        listed = dict((old or {}).get("parts", {}))
        on_disk = {uri.rsplit("/", 1)[1]: uri for uri in storage.list_files(join(out, PARTS), ".parquet")}
        for name in sorted(set(listed) - set(on_disk)):
            log.warning("extract: %s is listed in the manifest but missing; its rows will be extracted again", name)
            del listed[name]
        manifest = {"kind": KIND, "settings_key": key, "settings": identity, **header, "complete": False,
                    "parts": listed}  # name -> rows and SHA-256 per column; only listed parts count
        return cls(storage, out, manifest, list(listed_parts(manifest, out).items()),
                   [on_disk[n] for n in sorted(set(on_disk) - set(listed))])

    def lookup(self, kept: pa.Table) -> tuple[pa.Table, pa.Table]:
        """(found: dst, part, row of the cached ``kept`` rows; the ``kept`` rows to extract)."""
        found = locate(kept, read_feature_keys(self.storage, dict(self.old_parts)))
        missing = np.ones(kept.num_rows, bool)
        missing[found.column("dst").to_numpy()] = False
        return found, kept.filter(pa.array(missing)) if found.num_rows else kept

    def begin(self) -> None:
        """Before new parts are written: delete what an interrupted writer left, write the manifest."""
        for uri in self.stray:
            log.warning("extract: %s is not in the manifest (left by an interrupted run); deleted", uri)
            self.storage.delete(uri)
        self._write()

    def add_parts(self, entries: dict[str, dict]) -> None:
        """Parts now written (name -> rows, sha256): they count from now on."""
        if entries:
            self.manifest["parts"].update(entries)
            self._write()

    def finish(self, kept: pa.Table, found: pa.Table) -> Located:
        """Mark the folder complete; where every ``kept`` row is (old parts first, then the new)."""
        seen = {uri for uri, _ in self.old_parts}
        new = [(uri, e) for uri, e in listed_parts(self.manifest, self.out).items() if uri not in seen]
        if new:
            found = pa.concat_tables([found, locate(kept, read_feature_keys(self.storage, dict(new), len(self.old_parts)))])
        self.manifest.update(complete=True, rows=sum(e["rows"] for e in self.manifest["parts"].values()),
                             updated_unix=int(time.time()))
        self._write()
        return Located.of(self.old_parts + new, found)

    def _write(self) -> None:
        self.storage.write_text(join(self.out, MANIFEST), json.dumps(self.manifest, indent=2))
