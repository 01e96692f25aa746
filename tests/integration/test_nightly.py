"""nightly on local Ray and the moto S3 server: new query sets only, dated outputs, a watermark that
moves only past complete outputs; a broken night is redone the next night."""

import json

from jobs.cli import main
from router_core.dataset import load_dataset
from router_core.storage import Storage


def test_nightly_routes_new_sets_once_and_survives_a_bad_night(trained, s3_server, bucket, tmp_path, capsys):
    data, _, model, _ = trained
    st = Storage(endpoint_url=s3_server)
    q = load_dataset(Storage(), data).queries.select(["query_id", "text"])
    inp, out = f"s3://{bucket}/incoming", f"s3://{bucket}/routes"
    st.write_table(q.slice(0, 40), f"{inp}/set-a.parquet")
    st.write_table(q.slice(40, 30), f"{inp}/set-b/part-0.parquet")  # a set may be a folder of parts
    st.write_table(q.slice(70, 20), f"{inp}/set-b/part-1.parquet")
    st.write_bytes(f"{inp}/set-c.parquet", b"PAR1 this is not a parquet file")
    args = ["nightly", "--set", f"nightly.input={inp}", "--set", f"nightly.output={out}",
            "--set", f"nightly.model={model}"]

    # Night 1: a and b are routed; c is broken, the job fails with one line, c stays not done.
    assert main([*args, "--date", "2026-11-27"]) == 2
    assert "set-c.parquet" in capsys.readouterr().err
    wm = json.loads(st.read_text(f"{out}/_watermark.json"))
    assert sorted(wm["done"]) == ["set-a.parquet", "set-b"]
    for name, n in (("set-a", 40), ("set-b", 50)):
        run = json.loads(st.read_text(f"{out}/2026-11-27/{name}/run.json"))
        assert run["status"] == "complete" and run["routed"] == n and run["run_id"] == f"2026-11-27-{name}"
    assert not st.exists(f"{out}/2026-11-27/set-c/run.json")

    # Night 2: c was fixed and d arrived; only they are routed, into the new date.
    st.write_table(q.slice(90, 10), f"{inp}/set-c.parquet")
    st.write_table(q.slice(100, 20), f"{inp}/set-d.parquet")
    capsys.readouterr()
    assert main([*args, "--date", "2026-11-28"]) == 0
    printed = capsys.readouterr().out
    assert "4 query sets found, 2 routed, 2 already done" in printed
    wm = json.loads(st.read_text(f"{out}/_watermark.json"))
    assert sorted(wm["done"]) == ["set-a.parquet", "set-b", "set-c.parquet", "set-d.parquet"]
    assert wm["done"]["set-c.parquet"]["date"] == "2026-11-28"
    assert st.read_table(f"{out}/2026-11-28/set-c/routes").num_rows == 10
    assert not st.exists(f"{out}/2026-11-28/set-a/run.json")  # nothing routed twice

    # Night 3: nothing new, nothing done.
    capsys.readouterr()
    assert main([*args, "--date", "2026-11-29"]) == 0
    assert "0 routed, 4 already done" in capsys.readouterr().out


def test_each_night_routes_with_the_champion_that_champion_json_names(trained, tmp_path, capsys):
    """nightly.model is a retrain folder (configs/cluster.yaml): a promotion between two nights
    reaches the second with no edit (the fast twin of tests/integration/test_week.py)."""
    import shutil

    from router_core.model_index import Champion

    data, feats, model, _ = trained
    q = load_dataset(Storage(), data).queries.select(["query_id", "text"])
    models, inp, out = tmp_path / "models", tmp_path / "incoming", tmp_path / "routes"
    shutil.copytree(model, models / "v0002" / "model")  # a second version, as a promotion leaves it
    args = ["nightly", "--set", f"nightly.input={inp}", "--set", f"nightly.output={out}",
            "--set", f"nightly.model={models}"]
    champion = lambda v, m: Champion(version=v, model=m, dataset=data, features=feats, p_auccc=0.0,  # noqa: E731
                                     promoted_unix=0).save(Storage(), str(models))
    champion("v0001", model)
    Storage().write_table(q.slice(0, 10), str(inp / "set-1.parquet"))
    assert main([*args, "--date", "2026-12-01"]) == 0
    Storage().write_table(q.slice(10, 10), str(inp / "set-2.parquet"))
    champion("v0002", str(models / "v0002" / "model"))
    assert main([*args, "--date", "2026-12-02"]) == 0
    runs = [json.loads((out / d / s / "run.json").read_text()) for d, s in (("2026-12-01", "set-1"),
                                                                            ("2026-12-02", "set-2"))]
    assert [r["model"] for r in runs] == [model, str(models / "v0002" / "model")]
    assert [r["routed"] for r in runs] == [10, 10]
