"""retrain: new labelled outcomes (real LLMRouter rows the model has not seen) merged, a challenger
trained and judged against the champion on the same test split; champion.json moves only if not worse."""

import json
import shutil

import pyarrow as pa
import yaml

from jobs.cli import main
from router_core import importers
from router_core.dataset import load_dataset
from router_core.storage import Storage
from tests.conftest import shared_file

SETS = ["train.n_trials=1", "train.seeds=1", "train.keep=1", "train.max_epochs=5", "train.patience=2",
        "train.batch_size=32", "baselines.semantic_trials=1", "baselines.knn_k=[3]", "train.residual=false",
        "train.in_process=true", "train.cross_fit=2"]  # the members fitted in the driver: Ray Train is tested elsewhere


def _new_batch(root, data, n=24):
    """n real LLMRouter train queries outside the 120, their outcomes, and one outcome of an unpriced model."""
    full = importers.import_llmrouter(shared_file("llmrouter-9/scores_wide.csv").read_text(encoding="utf-8"),
                                      shared_file("llmrouter-9/llm_candidates.json").read_text()).dataset
    have = set(load_dataset(Storage(), data).queries.column("query_id").to_pylist())
    q = full.queries.filter(pa.array([s == "train" and i not in have for s, i in
                                      zip(full.queries.column("split").to_pylist(),
                                          full.queries.column("query_id").to_pylist())]))
    q = q.take(list(range(0, q.num_rows, q.num_rows // n))[:n])
    ids = set(q.column("query_id").to_pylist())
    o = full.outcomes.filter(pa.array([x in ids for x in full.outcomes.column("query_id").to_pylist()]))
    stray = pa.table({"query_id": [q.column("query_id")[0].as_py()], "model": ["unpriced-model-x"], "score": [1.0],
                      "cost_usd": pa.array([None], pa.float64()), "output_tokens": pa.array([None], pa.int64())},
                     schema=o.schema)
    st = Storage()
    st.write_table(q, f"{root}/batch-001/queries.parquet")
    st.write_table(pa.concat_tables([o, stray]), f"{root}/batch-001/outcomes.parquet")
    return q.num_rows, o.num_rows


def test_retrain_merges_trains_and_promotes_only_if_not_worse(trained, tmp_path, capsys):
    data, feats, _, _ = trained
    n_q, n_o = _new_batch(tmp_path / "new", data)
    cfg = tmp_path / "retrain.yaml"
    cfg.write_text(yaml.safe_dump({"retrain": {"data": data, "new": str(tmp_path / "new"), "features": feats,
                                               "models": str(tmp_path / "models")}}))
    args = ["retrain", "--config", str(cfg), *[x for s in SETS for x in ("--set", s)]]

    # The first retraining has no champion: it becomes the champion.
    assert main(args) == 0
    d1 = json.loads((tmp_path / "models" / "v0001" / "decision.json").read_text())
    assert d1["promoted"] and d1["merge"]["new_queries"] == n_q and d1["merge"]["new_outcomes"] == n_o
    assert d1["rejected"] == 1  # the unpriced model's outcome, with its reason
    rej = Storage().read_table(str(tmp_path / "models" / "v0001" / "rejects.parquet")).to_pylist()
    assert "unpriced-model-x is not in the pool" in rej[0]["reason"]
    champ = json.loads((tmp_path / "models" / "champion.json").read_text())
    assert champ["version"] == "v0001"
    merged = load_dataset(Storage(), champ["dataset"])
    assert merged.queries.num_rows == 120 + n_q
    test_ids = lambda ds: sorted(q for q, s in zip(ds.queries.column("query_id").to_pylist(),  # noqa: E731
                                                   ds.queries.column("split").to_pylist()) if s == "test")
    assert test_ids(merged) == test_ids(load_dataset(Storage(), data))  # the test split is fixed

    # A rerun with nothing new changes nothing: no version, the same champion.
    capsys.readouterr()
    assert main(args) == 0
    assert "no batch under" in capsys.readouterr().out and not (tmp_path / "models" / "v0002").exists()

    # The second, the same outcomes again in a new batch with the unpriced model now priced: a new
    # target joins; judged against v0001. batch-001 is already in v0001's data and is not merged again.
    shutil.copytree(tmp_path / "new" / "batch-001", tmp_path / "new" / "batch-002")
    (tmp_path / "new" / "batch-002" / "pool.yaml").write_text(yaml.safe_dump(
        {"models": [{"name": "unpriced-model-x", "price_in_per_mtok": 0.1, "price_out_per_mtok": 0.2}]}))
    assert main(args) == 0
    out = capsys.readouterr().out
    d2 = json.loads((tmp_path / "models" / "v0002" / "decision.json").read_text())
    assert d2["merge"]["new_models"] == ["unpriced-model-x"] and d2["rejected"] == 0
    assert d2["merge"]["batches"] == 1 and d2["merge"]["new_queries"] == 0  # batch-002 only
    assert [b.rsplit("/", 1)[1] for b in d2["merge"]["batch_names"]] == ["batch-001", "batch-002"]
    assert d2["champion"]["version"] == "v0001" and "challenger P-AUCCC" in out
    assert d2["promoted"] == (d2["challenger"]["p_auccc"] >= d2["champion"]["p_auccc"])
    now = json.loads((tmp_path / "models" / "champion.json").read_text())["version"]
    assert now == ("v0002" if d2["promoted"] else "v0001")
