"""onboard: a new target added to the model trained on real LLMRouter rows, from its labels alone.

The newcomer's answers are made from the real outcomes of three pool models (right where at least
two of them are, one answer in ten flipped, seeded): a model like the others, as a new release of a
known family is."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from jobs.cli import main
from router_core.dataset import load_dataset, outcome_matrix
from router_core.features import load_features
from router_core.model_index import read_index
from router_core.routers import RouterInputs, load_router, predict_any, prefill_columns
from router_core.storage import Storage

NEW = "newcomer-9b"


def _new_folder(root: Path, data: str, model: str, *, name: str = NEW, rows: slice = slice(None),
                prices: bool = True, unknown: int = 0, price: float = 0.15, need: int = 2) -> str:
    ds = load_dataset(Storage(), data)
    qids = ds.queries.column("query_id").to_pylist()[rows]
    targets = read_index(Storage(), model).targets
    s = outcome_matrix(ds.outcomes, qids, [targets[0], targets[3], targets[6]])
    right = (np.nansum(s, axis=1) >= need) ^ (np.random.default_rng(7).random(len(qids)) < 0.1)
    ids = qids + [f"never-seen-{i}" for i in range(unknown)]
    scores = np.r_[right.astype(float), np.ones(unknown)]
    t = pa.table({"query_id": ids, "model": [name] * len(ids), "score": scores,
                  "cost_usd": pa.array([None] * len(ids), pa.float64()),
                  "output_tokens": pa.array([None] * len(ids), pa.int64())})
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(t, root / "outcomes.parquet")
    if prices:
        (root / "pool.yaml").write_text(yaml.safe_dump({"models": [{"name": name, "price_in_per_mtok": price,
                                                                    "price_out_per_mtok": 4 * price}]}))
    return str(root)


def _digests(folder: str) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _proba(model: str, name: str, data: str, feats: str) -> np.ndarray:
    """The router's probabilities on every query of the dataset, with tasks (and the prior input)."""
    index = read_index(Storage(), model)
    router, _ = load_router(Storage(), index.folder(model, name))
    q = load_dataset(Storage(), data).queries
    fs = load_features(Storage(), feats, q, prefill_columns(router))
    x = RouterInputs(n=q.num_rows, prefill=fs.columns, tasks=q.column("task").to_pylist())
    x.prior = predict_any(load_router(Storage(), index.folder(model, "task_prior"))[0], x)  # as evaluate gives it
    return predict_any(router, x)


def test_onboard_adds_the_target_keeps_the_old_columns_to_the_bit_and_routes_it(trained, tmp_path, capsys):
    data, feats, model, _ = trained
    before = _digests(model)
    new = _new_folder(tmp_path / "new", data, model, unknown=2)
    out = str(tmp_path / "onb")
    args = ["onboard", "--data", data, "--features", feats, "--model", model, "--new", new, "--out", out]
    assert main([*args, "--set", "onboard.require_gain=false"]) == 1  # two rows of unknown queries: rejected
    printed = capsys.readouterr().out
    assert f"onboard {NEW}: 80 labels" in printed and "2 rows rejected" in printed
    rejects = pq.read_table(Path(out) / "rejects.parquet").to_pylist()
    assert len(rejects) == 2 and all(r["reason"].startswith("unknown query") for r in rejects)

    d = json.loads((Path(out) / "decision.json").read_text())
    assert d["added"] and d["labels"] == 80 and d["head"] in ("prior", "similar") and d["rejected"] == 2
    c = d["counts"]  # every row read: joined or rejected; every row joined: fitted, or on test (or without features)
    assert c["read"] == 122 and c["read"] == c["joined"] + c["rejected_unknown_query"] + c["rejected_invalid"]
    assert c["joined"] == c["fitted"] + c["test_or_other_split"] + c["train_val_without_features"] == 120
    assert d["label_rows"]["out_of_fold"] > 0 and set(d["heads"]) == {"prior", "similar"}
    g = d["pool_gain"]
    assert g["rows"] == 80 and np.isclose(g["gain"], g["p_auccc_with"] - g["p_auccc_without"])
    assert d["test"]["target_scored"] and 0 <= d["test"]["target_auc"] <= 1

    old, idx = read_index(Storage(), model), read_index(Storage(), str(Path(out) / "model"))
    assert idx.targets == [*old.targets, NEW] and idx.serve == old.serve and NEW in [m["name"] for m in idx.pool["models"]]
    lineage = idx.onboard
    assert lineage["targets"] == [NEW] and lineage["from_model"] == model and lineage["labels"] == 80
    assert lineage["from_index_sha256"] == hashlib.sha256((Path(model) / "manifest.json").read_bytes()).hexdigest()
    assert idx.data_fingerprint != old.data_fingerprint and idx.operating_point["rows"] == {"labelled": 80}
    assert _digests(model) == before  # the old version untouched

    # The old targets' probabilities, bit for bit; the new column beside them.
    merged = str(Path(out) / "dataset")
    p_old = _proba(model, old.serve, merged, feats)
    p_new = _proba(str(Path(out) / "model"), idx.serve, merged, feats)
    assert p_new.shape == (120, len(old.targets) + 1) and np.array_equal(p_new[:, :-1], p_old)
    assert np.ptp(p_new[:, -1]) > 0.01  # it tells queries apart

    # A round trip through route: every query, the new target among the ones it may call.
    routes_out = tmp_path / "routes"
    assert main(["route", "--queries", merged, "--model", str(Path(out) / "model"), "--out", str(routes_out)]) == 0
    routes = pq.read_table(routes_out / "routes")
    assert routes.num_rows == 120 and set(routes.column("model").to_pylist()) <= set(idx.targets)
    got = np.stack([routes.column(f"p:{t}").to_numpy() for t in idx.targets], axis=1)
    np.testing.assert_allclose(got, p_new, atol=1e-5)

    # Without the override, the target is added only where the pool does not route worse with it.
    out2 = str(tmp_path / "onb2")
    assert main(["onboard", "--data", data, "--features", feats, "--model", model, "--new", new, "--out", out2]) == 1
    d2 = json.loads((Path(out2) / "decision.json").read_text())
    assert d2["pool_gain"] == g and d2["added"] == (g["gain"] >= 0)
    assert (Path(out2) / "model" / "manifest.json").exists() == d2["added"]


def test_onboard_refuses_bad_input_in_one_line(trained, tmp_path, capsys):
    data, feats, model, _ = trained
    targets = read_index(Storage(), model).targets

    def refused(new: str, *sets: str) -> str:
        rc = main(["onboard", "--data", data, "--features", feats, "--model", model, "--new", new,
                   "--out", str(tmp_path / "out"), *[x for s in sets for x in ("--set", s)]])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, (rc, err)
        return err[0]

    assert "already in the pool" in refused(_new_folder(tmp_path / "known", data, model, name=targets[2]))
    assert f"no prices for {NEW}" in refused(_new_folder(tmp_path / "unpriced", data, model, prices=False))
    few = refused(_new_folder(tmp_path / "few", data, model, rows=slice(0, 30)))
    assert "20 usable labels" in few and "needs at least 50 (onboard.min_labels)" in few
    assert "needs at least 100" in refused(_new_folder(tmp_path / "some", data, model), "onboard.min_labels=100")
    two = tmp_path / "two"
    t = pq.read_table(Path(_new_folder(two, data, model)) / "outcomes.parquet")
    other = t.set_column(1, "model", pa.array(["another-model"] * t.num_rows))
    pq.write_table(pa.concat_tables([t, other]), two / "outcomes.parquet")
    assert "outcomes of 2 models" in refused(str(two))
    assert "no outcomes.parquet" in refused(str(tmp_path / "nothing"))
    assert not (tmp_path / "out" / "model").exists()


def test_retrain_sends_a_new_targets_small_batch_through_onboard_and_promotes_it(trained, tmp_path, capsys):
    from router_core.model_index import Champion, read_champion

    data, feats, model, _ = trained
    models = tmp_path / "models"
    (models / "v0001").mkdir(parents=True)
    (models / "v0001" / "decision.json").write_text("{}")
    Champion(version="v0001", model=model, dataset=data, features=feats, p_auccc=0.0,
             promoted_unix=0).save(Storage(), str(models))  # as an earlier retrain leaves it
    _new_folder(tmp_path / "new" / "batch-007", data, model, price=0.001, need=1)  # cheap, right where any of 3 is
    cfg = tmp_path / "retrain.yaml"
    cfg.write_text(yaml.safe_dump({"retrain": {"data": data, "new": str(tmp_path / "new"), "features": feats,
                                               "models": str(models)}, "onboard": {"require_gain": False}}))
    assert main(["retrain", "--config", str(cfg)]) == 0
    assert f"{NEW} onboarded from 80 labels" in capsys.readouterr().out
    d = json.loads((models / "v0002" / "decision.json").read_text())
    assert d["via"] == "onboard" and d["merge"]["new_models"] == [NEW] and d["champion"]["version"] == "v0001"
    # Judged beside the champion on the same test rows: promoted where added and not worse there.
    assert d["promoted"] == (d["added"] and d["test"]["p_auccc"] >= d["champion"]["p_auccc"])
    assert d["promoted"]  # a cheap model right wherever one of three is: the pool routes better with it
    champ = read_champion(Storage(), str(models))
    assert champ.version == "v0002" and champ.model == str(models / "v0002" / "model")
    assert read_index(Storage(), champ.model).targets[-1] == NEW
    assert NEW in load_dataset(Storage(), champ.dataset).pool.names

    # A weaker newcomer (right where two of three are): the pointer moves only with the decision
    # (on these 40 test queries this one routes worse than the champion: it stays).
    weak = tmp_path / "weak"
    (weak / "models" / "v0001").mkdir(parents=True)
    (weak / "models" / "v0001" / "decision.json").write_text("{}")
    Champion(version="v0001", model=model, dataset=data, features=feats, p_auccc=0.0,
             promoted_unix=0).save(Storage(), str(weak / "models"))
    _new_folder(weak / "new" / "batch-001", data, model, price=0.001)
    cfg.write_text(yaml.safe_dump({"retrain": {"data": data, "new": str(weak / "new"), "features": feats,
                                               "models": str(weak / "models")}, "onboard": {"require_gain": False}}))
    assert main(["retrain", "--config", str(cfg)]) == 0
    d2 = json.loads((weak / "models" / "v0002" / "decision.json").read_text())
    assert d2["promoted"] == (d2["added"] and d2["test"]["p_auccc"] >= d2["champion"]["p_auccc"])
    assert read_champion(Storage(), str(weak / "models")).version == ("v0002" if d2["promoted"] else "v0001")
    assert ("promoted: champion.json" in capsys.readouterr().out) == d2["promoted"]


def test_only_a_small_batch_of_one_unknown_priced_model_is_onboarded(tmp_path):
    from router_core.labels import batch_folders, onboard_batch

    st = Storage()

    def batch(name: str, models: list[str], prices: bool = True) -> None:
        t = pa.table({"query_id": [f"q{i}" for i in range(len(models))], "model": models,
                      "score": [1.0] * len(models)})
        st.write_table(t, str(tmp_path / name / "outcomes.parquet"))
        if prices:
            (tmp_path / name / "pool.yaml").write_text("models: []\n")

    batch("a-mixed", ["new", "old"])
    batch("b-known", ["old", "old"])
    batch("c-unpriced", ["new", "new"], prices=False)
    batch("d-large", ["new"] * 5)
    assert onboard_batch(st, batch_folders(st, str(tmp_path)), ["old"], max_rows=5) is None
    batch("e-small", ["new"] * 4)
    assert onboard_batch(st, batch_folders(st, str(tmp_path)), ["old"], max_rows=5) == str(tmp_path / "e-small")
    assert onboard_batch(st, batch_folders(st, str(tmp_path)), ["old"], max_rows=6) == str(tmp_path / "d-large")
