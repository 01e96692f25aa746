"""A week in the life of the operating loop (issue 48), on local Ray and the moto S3 server, with the
shipped configs/cluster.yaml: its bucket renamed to the test's, the GPU settings swapped for this
machine's, the training sized for a test. Day 0 makes the first champion; each night routes the new
query sets with whatever champion.json names; graded outcomes and a new model's labels arrive in
between and retrain promotes (or keeps) a champion. Every query is routed exactly once, the watermark
lists every set, and a rerun of any step changes nothing. About 90 s, in the fast tier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from jobs.cli import main
from router_core import importers
from router_core.dataset import Dataset, load_dataset, outcome_matrix, save_dataset
from router_core.model_index import read_champion, read_index
from router_core.storage import Storage, join
from tests.conftest import shared_file
from tests.integration.conftest import FIXTURE_SETS
from tests.integration.test_onboard import NEW

REPO = Path(__file__).resolve().parents[2]


def _fresh(have: set[str], n: int) -> tuple[pa.Table, pa.Table]:
    """n real LLMRouter training queries not in ``have``, and their 9 models' outcomes."""
    full = importers.import_llmrouter(shared_file("llmrouter-9/scores_wide.csv").read_text(encoding="utf-8"),
                                      shared_file("llmrouter-9/llm_candidates.json").read_text()).dataset
    q = full.queries
    rows = [i for i, (s, x) in enumerate(zip(q.column("split").to_pylist(), q.column("query_id").to_pylist()))
            if s == "train" and x not in have]
    q = q.take(rows[::len(rows) // n][:n])
    ids = set(q.column("query_id").to_pylist())
    return q, full.outcomes.filter(pa.array([x in ids for x in full.outcomes.column("query_id").to_pylist()]))


def test_a_week_in_the_life_with_the_shipped_cluster_config(small_lr, encoder_cache, s3_server, bucket, tmp_path,
                                                            capsys):
    data, feats = small_lr
    st = Storage(endpoint_url=s3_server)
    cfg = tmp_path / "cluster.yaml"  # the shipped layout, in the test's bucket
    cfg.write_text((REPO / "configs/cluster.yaml").read_text().replace("s3://prefill-router/", f"s3://{bucket}/"))
    from router_core.config import load_config

    c = load_config(str(cfg), [])
    rc, nc = c.retrain, c.nightly
    here = ["ray.address=null", "extract.device=cpu", "extract.dtype=float32", "extract.actors=1",
            "extract.actor_num_gpus=0", "extract.actor_num_cpus=1", f"extract.cache_dir={encoder_cache}",
            "train.storage_path=null", "train.num_workers=1", "train.cpus_per_worker=1", *FIXTURE_SETS,
            "train.max_concurrent=1", "onboard.require_gain=false"]
    args = ["--config", str(cfg), *[x for s in here for x in ("--set", s)]]

    # Day 0: the imported data (every third query a test query) and its feature cache in the bucket.
    ds = load_dataset(Storage(), data)
    q = ds.queries
    q = q.set_column(q.schema.get_field_index("split"), "split",
                     pa.array(["test" if i % 3 == 0 else "train" for i in range(q.num_rows)]))
    save_dataset(st, rc.data, Dataset(q, ds.outcomes, ds.pool))
    for f in sorted(Path(feats).rglob("*")):
        if f.is_file():
            st.write_bytes(join(rc.features, str(f.relative_to(feats))), f.read_bytes())
    assert main(["retrain", *args]) == 0
    champ = read_champion(st, rc.models)
    assert champ.version == "v0001" and nc.model == rc.models

    have = set(q.column("query_id").to_pylist())
    sets = {}
    for name in ("batch-a", "batch-b", "batch-c"):
        sets[name] = _fresh(have, 16)
        have |= set(sets[name][0].column("query_id").to_pylist())

    def night(date: str, name: str) -> dict:
        st.write_table(sets[name][0].select(["query_id", "text", "task"]), join(nc.input, f"{name}.parquet"))
        capsys.readouterr()
        assert main(["nightly", *args, "--date", date]) == 0
        run = json.loads(st.read_text(join(nc.output, date, name, "run.json")))
        assert run["status"] == "complete" and run["routed"] == 16
        assert capsys.readouterr().out.splitlines()[0].endswith(f", with {run['model']}")  # the night names it
        return run

    # Night 1: batch A, routed with v0001.
    run = night("2026-12-01", "batch-a")
    assert run["model"] == champ.model

    # Graded outcomes for batch A arrive: v0002 is trained and promoted only if not worse.
    qa, oa = sets["batch-a"]
    st.write_table(qa, join(rc.new, "batch-a", "queries.parquet"))
    st.write_table(oa, join(rc.new, "batch-a", "outcomes.parquet"))
    assert main(["retrain", *args]) == 0
    d2 = json.loads(st.read_text(join(rc.models, "v0002", "decision.json")))
    assert d2["merge"]["new_queries"] == 16 and d2["champion"]["version"] == "v0001"
    assert d2["promoted"] == (d2["challenger"]["p_auccc"] >= d2["champion"]["p_auccc"]) and "rule" in d2
    champ = read_champion(st, rc.models)
    assert champ.version == ("v0002" if d2["promoted"] else "v0001")

    # Night 2: batch B, with whichever champion.json names.
    assert night("2026-12-02", "batch-b")["model"] == champ.model

    # A new model's labelled answers (one per query of the champion's data) arrive: retrain takes
    # onboard's path into v0003, and the pool grows.
    ds = load_dataset(st, champ.dataset)
    qids, targets = ds.queries.column("query_id").to_pylist(), read_index(st, champ.model).targets
    s = outcome_matrix(ds.outcomes, qids, [targets[0], targets[3], targets[6]])
    right = (np.nansum(s, axis=1) >= 1) ^ (np.random.default_rng(7).random(len(qids)) < 0.1)  # cheap, right where any of 3 is
    st.write_table(pa.table({"query_id": qids, "model": [NEW] * len(qids), "score": right.astype(float),
                             "cost_usd": pa.array([None] * len(qids), pa.float64()),
                             "output_tokens": pa.array([None] * len(qids), pa.int64())}),
                   join(rc.new, "batch-newcomer", "outcomes.parquet"))
    st.write_text(join(rc.new, "batch-newcomer", "pool.yaml"), yaml.safe_dump(
        {"models": [{"name": NEW, "price_in_per_mtok": 0.001, "price_out_per_mtok": 0.004}]}))
    capsys.readouterr()
    assert main(["retrain", *args]) == 0
    assert f"{NEW} onboarded from" in capsys.readouterr().out
    d3 = json.loads(st.read_text(join(rc.models, "v0003", "decision.json")))
    assert d3["via"] == "onboard" and d3["promoted"], d3.get("test")
    champ = read_champion(st, rc.models)
    assert champ.version == "v0003" and read_index(st, champ.model).targets[-1] == NEW

    # Night 3: batch C, over the grown pool.
    run = night("2026-12-03", "batch-c")
    assert run["model"] == champ.model
    tally = json.loads(st.read_text(join(nc.output, "2026-12-03", "batch-c", "tally.json")))
    assert NEW in tally["per_model"]

    # Every query routed exactly once; the watermark lists every set, each on its night.
    routed = [x for d, name in (("2026-12-01", "batch-a"), ("2026-12-02", "batch-b"), ("2026-12-03", "batch-c"))
              for x in st.read_table(join(nc.output, d, name, "routes")).column("query_id").to_pylist()]
    assert sorted(routed) == sorted(x for t, _ in sets.values() for x in t.column("query_id").to_pylist())
    wm = json.loads(st.read_text(join(nc.output, "_watermark.json")))
    assert {k: v["date"] for k, v in wm["done"].items()} == {
        "batch-a.parquet": "2026-12-01", "batch-b.parquet": "2026-12-02", "batch-c.parquet": "2026-12-03"}

    # A rerun of any step changes nothing: no set routed again, no new version, the same champion.
    before = sorted(st.list_files(f"s3://{bucket}/"))
    capsys.readouterr()
    assert main(["nightly", *args, "--date", "2026-12-03"]) == 0
    assert "3 query sets found, 0 routed, 3 already done" in capsys.readouterr().out
    assert main(["retrain", *args]) == 0
    assert "champion v0003 stays" in capsys.readouterr().out
    assert sorted(st.list_files(f"s3://{bucket}/")) == before and read_champion(st, rc.models).version == "v0003"

    # The operator's morning: status names the champion, each version's decision, the newcomer and the last night.
    assert main(["status", *args]) == 0
    out = capsys.readouterr().out
    assert "champion v0003" in out and "onboarded: " + NEW + " (v0003)" in out
    assert "nightly: 3 query sets done, the last night 2026-12-03" in out and out.rstrip().endswith(champ.model)
    assert main(["status", *args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [v["version"] for v in doc["versions"]] == ["v0001", "v0002", "v0003"]
    assert [v["serving"] for v in doc["versions"]] == [False, False, True]
