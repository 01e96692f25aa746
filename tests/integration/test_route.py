"""route on local Ray: queries in the moto S3 server, the model trained on real LLMRouter data."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from router_core.dataset import load_dataset
from router_core.features import load_features
from router_core.model_index import read_index
from router_core.routers import RouterInputs, TaskPrior, load_router, predict_any, prefill_columns
from router_core.storage import Storage
from tests.integration.conftest import assert_no_secret


def _queries_with_bad_rows(data: str) -> pa.Table:
    q = load_dataset(Storage(), data).queries.select(["query_id", "text", "split", "task"])
    bad = pa.table({"query_id": ["", q.column("query_id")[0].as_py(), "no-text", "blank"],
                    "text": ["an id-less query", "a duplicate id", None, "   "],
                    "split": [None] * 4, "task": [None] * 4}, schema=q.schema)
    return pa.concat_tables([q, bad])


def _put_parts(st: Storage, table: pa.Table, uri: str, n: int = 2) -> None:
    step = -(-table.num_rows // n)
    for i in range(n):
        st.write_table(table.slice(i * step, step), f"{uri}/part-{i}.parquet")


def _routes(storage: Storage, out: str) -> pa.Table:
    return storage.read_table(f"{out}/routes")


def test_route_from_s3_reconciles_and_is_idempotent(trained, s3_server, bucket, tmp_path, capsys):
    data, feats, model, _ = trained
    st = Storage(endpoint_url=s3_server)
    q = _queries_with_bad_rows(data)
    _put_parts(st, q, f"s3://{bucket}/in/batch1")
    out = f"s3://{bucket}/routes/batch1"
    capsys.readouterr()
    assert main(["route", "--queries", f"s3://{bucket}/in/batch1", "--model", model, "--out", out]) == 1  # rejects
    text = capsys.readouterr().out
    run = json.loads(st.read_text(f"{out}/run.json"))
    tally = json.loads(st.read_text(f"{out}/tally.json"))
    routes = _routes(st, out)
    rejects = st.read_table(f"{out}/rejects.parquet")
    # Every input row is routed or rejected, with its reason; the printout says so.
    assert run["status"] == "complete" and run["input_rows"] == 124 == run["routed"] + run["rejected"]
    assert routes.num_rows == 120 and rejects.num_rows == 4 and "124 queries in = 120 routed + 4 rejected" in text
    assert sorted(rejects.column("reason").to_pylist()) == sorted([
        "query_id is null or empty", "duplicate query_id (first at row 0)", "text is null",
        "text is empty or whitespace only"])
    # The routes: one row per query, a probability per target, the chosen model's estimated cost.
    index = json.loads(open(f"{model}/manifest.json").read())
    targets, tau = index["targets"], index["operating_point"]["tau"]
    assert set(routes.column_names) >= {"query_id", "model", "est_cost_usd", "policy", "policy_params",
                                        "router_version", "run_id", *[f"p:{t}" for t in targets]}
    assert len(set(routes.column("query_id").to_pylist())) == 120
    p = np.stack([routes.column(f"p:{t}").to_numpy() for t in targets], axis=1)
    chosen = [targets.index(m) for m in routes.column("model").to_pylist()]
    # By default the model's operating point (chosen by train on held-out rows): within tau of the most probable.
    assert (p[np.arange(120), chosen] >= p.max(axis=1) - tau - 1e-6).all() and tally["policy"]["tau"] == tau
    # What that point promises this batch of 120: the change against the best single, with its interval.
    pr, op = tally["promise"], index["operating_point"]
    assert pr["batch"] == 120 and pr["rows"] == op["rows"] and pr["accuracy_change_points"] == 100 * op["accuracy_change"]
    assert pr["interval_points"][0] < pr["accuracy_change_points"] < pr["interval_points"][1]
    assert "promised at the operating point, for a batch of 120 like train's held-out rows" in text
    # The tally adds up.
    per = tally["per_model"]
    assert sum(v["queries"] for v in per.values()) == 120
    assert sum(v["cost_usd"] for v in per.values()) == pytest.approx(tally["total_cost_usd"])
    assert tally["total_cost_usd"] == pytest.approx(sum(routes.column("est_cost_usd").to_pylist()))
    assert tally["always_most_expensive"]["cost_usd"] >= tally["total_cost_usd"]
    # LLMRouter's outcomes carry no output length or cost: calls are priced on their prompts alone, and it says so.
    assert tally["cost_model"] == "median output tokens per target (none known on the training calls: 0 tokens)"
    assert tally["output_tokens_by"] == "each target's median" and "output tokens by each target's median" in text
    # Only new texts were encoded: the model's feature cache already held all 120.
    assert run["extract"]["extracted"] == 0 and run["extract"]["reused"] == 120

    # A rerun of the same run: same run id, same routes.
    before = routes.sort_by("query_id")
    assert main(["route", "--queries", f"s3://{bucket}/in/batch1", "--model", model, "--out", out]) == 1  # rejects
    assert json.loads(st.read_text(f"{out}/run.json"))["run_id"] == run["run_id"]
    assert _routes(st, out).sort_by("query_id").equals(before)
    # Another run (another policy) into the same folder is refused: it would overwrite what it does not own.
    assert main(["route", "--queries", f"s3://{bucket}/in/batch1", "--model", model, "--out", out,
                 "--policy", "utility", "--lam", "100"]) == 2
    assert "holds run " + run["run_id"] in capsys.readouterr().err
    # The S3 credentials the job ran with appear in no output: routes, tally, run.json, the model.
    assert assert_no_secret(s3_server, bucket, model) > 10


def test_budget_policy_spends_at_most_the_budget(trained, tmp_path, capsys):
    data, feats, model, _ = trained
    q = load_dataset(Storage(), data).queries
    pq.write_table(q, tmp_path / "q.parquet")
    free = tmp_path / "free"
    assert main(["route", "--queries", str(tmp_path / "q.parquet"), "--model", model, "--out", str(free),
                 "--tau", "0"]) == 0  # argmax: the most expected accuracy there is
    full = json.loads((free / "tally.json").read_text())["total_cost_usd"]
    cheapest = json.loads((free / "tally.json").read_text())
    budget = full / 2
    out = tmp_path / "budget"
    capsys.readouterr()
    assert main(["route", "--queries", str(tmp_path / "q.parquet"), "--model", model, "--out", str(out),
                 "--policy", "budget", "--budget-usd", str(budget)]) == 0
    t = json.loads((out / "tally.json").read_text())
    assert t["policy"]["name"] == "budget" and t["policy"]["used_usd"] <= budget + 1e-12
    assert t["total_cost_usd"] <= budget + 1e-12 and t["expected_accuracy"] <= cheapest["expected_accuracy"] + 1e-9
    assert "policy budget" in capsys.readouterr().out
    for bad in ("0", "-1"):
        assert main(["route", "--queries", str(tmp_path / "q.parquet"), "--model", model, "--out",
                     str(tmp_path / f"b{bad}"), "--policy", "budget", "--budget-usd", bad]) == 2
        assert "budget_usd (--budget-usd) must be a positive number of dollars" in capsys.readouterr().err


def test_routed_probabilities_are_the_routers_own(trained, tmp_path):
    """A batch of some rows of the cache's parts, five with edited texts (encoded by this run): each
    routed probability is the served router's prediction on that query's features read back."""
    data, feats, model, _ = trained
    cache = tmp_path / "cache"
    shutil.copytree(feats, cache)  # this run adds rows: keep the session's cache as it is
    q = load_dataset(Storage(), data).queries.select(["query_id", "text"]).take(list(range(0, 120, 3)))
    texts = q.column("text").to_pylist()
    for i in range(0, 40, 8):
        texts[i] += " Answer in one word."
    q = q.set_column(1, "text", pa.array(texts))
    pq.write_table(q, tmp_path / "q.parquet")
    out = tmp_path / "out"
    assert main(["route", "--queries", str(tmp_path / "q.parquet"), "--model", model, "--out", str(out),
                 "--features", str(cache)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["extract"] == {"reused": 35, "extracted": 5, "rejected": 0} and run["routed"] == 40
    routes = pq.read_table(out / "routes")
    assert routes.column("query_id").to_pylist() == q.column("query_id").to_pylist()  # the input's order
    index = read_index(Storage(), model)
    router, _ = load_router(Storage(), index.folder(model, index.serve))
    fs = load_features(Storage(), str(cache), q, prefill_columns(router))
    assert fs.present.all()
    want = predict_any(router, RouterInputs(n=40, prefill=fs.columns))  # no task column: the global prior
    got = np.stack([routes.column(f"p:{t}").to_numpy() for t in index.targets], axis=1)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.ptp(got, axis=0).max() > 1e-3  # not one row repeated


def test_a_router_that_reads_tasks_gets_them_at_route_time(trained, tmp_path):
    """The mix with the task prior, routed with the task column: what evaluate scored (tasks read),
    not the global prior (route once dropped the column with everything but id and text)."""
    data, feats, model, _ = trained
    q = load_dataset(Storage(), data).queries.select(["query_id", "text", "task"]).take(list(range(0, 60, 2)))
    pq.write_table(q, tmp_path / "q.parquet")
    out = tmp_path / "out"
    assert main(["route", "--queries", str(tmp_path / "q.parquet"), "--model", model, "--out", str(out),
                 "--router", "prefill_trunk_mix"]) == 0
    index = read_index(Storage(), model)
    router, manifest = load_router(Storage(), index.folder(model, "prefill_trunk_mix"))
    assert manifest["uses_tasks"] and router.w_[0, 1] > 0  # it leans on the prior: tasks change it
    fs = load_features(Storage(), feats, q, prefill_columns(router))
    routes = pq.read_table(out / "routes")
    got = np.stack([routes.column(f"p:{t}").to_numpy() for t in index.targets], axis=1)
    tasks = q.column("task").to_pylist()
    np.testing.assert_allclose(got, predict_any(router, RouterInputs(n=30, prefill=fs.columns, tasks=tasks)), atol=1e-5)
    assert np.abs(got - predict_any(router, RouterInputs(n=30, prefill=fs.columns))).max() > 1e-3


def test_a_model_that_serves_the_prior_routes_without_features(trained, tmp_path):
    """The task prior served (train serves it where no learned router beats it): route reads the
    queries' tasks and encodes nothing; without a task column every query gets the global mean."""
    data, _, model, _ = trained
    q = load_dataset(Storage(), data).queries.select(["query_id", "text", "task"]).take(list(range(0, 60, 2)))
    pq.write_table(q, tmp_path / "q.parquet")
    pq.write_table(q.select(["query_id", "text"]), tmp_path / "q_no_task.parquet")
    index = read_index(Storage(), model)
    prior, manifest = load_router(Storage(), index.folder(model, "task_prior"))
    assert isinstance(prior, TaskPrior) and manifest["needs"] == ["tasks"]
    for src, tasks in (("q.parquet", q.column("task").to_pylist()), ("q_no_task.parquet", None)):
        out = tmp_path / src.split(".")[0]
        assert main(["route", "--queries", str(tmp_path / src), "--model", model, "--out", str(out),
                     "--router", "task_prior", "--features", str(tmp_path / "never-written")]) == 0
        run = json.loads((out / "run.json").read_text())
        assert run["extract"] == {"reused": 0, "extracted": 0, "rejected": 0} and run["routed"] == 30
        assert run["features"] is None and not (tmp_path / "never-written").exists()
        routes = pq.read_table(out / "routes")
        got = np.stack([routes.column(f"p:{t}").to_numpy() for t in index.targets], axis=1)
        np.testing.assert_allclose(got, prior.prior(tasks, 30), atol=1e-6)
        assert (np.ptp(got, axis=0).max() > 1e-3) == (tasks is not None)  # by task, or one row for all


def test_a_model_with_a_length_map_prices_each_call_by_its_features(trained, tmp_path, capsys):
    """The model's length map (router_core.lengths.LinearLengths) where it serves: each routed call's
    estimated cost is its prompt's input tokens x price + the map's output tokens for that query x
    price, the map read in route's prediction tasks from the same feature columns; queries with a
    task column where the map serves only those without one are priced by the means."""
    from router_core.importers import CHARS_PER_TOKEN
    from router_core.lengths import LinearLengths, OutputLengths

    data, feats, model, _ = trained
    m = tmp_path / "model"
    shutil.copytree(model, m)
    index = read_index(Storage(), str(m))
    router, _ = load_router(Storage(), index.folder(str(m), index.serve))
    cols = prefill_columns(router)
    assert cols, "the fixture serves a router on prefill features"
    k, d = len(index.targets), sum(load_features(Storage(), feats, load_dataset(Storage(), data).queries.slice(0, 1),
                                                 cols).columns[c].shape[1] for c in cols)
    rng = np.random.default_rng(0)
    lin = LinearLengths(cols, rng.normal(0, 5, (d, k)), np.linspace(100, 600, k))
    lin.save(Storage(), str(m / "output_lengths"), {"targets": index.targets})
    means = OutputLengths(index.targets, np.full(k, 7.0), np.full(k, 7.0), np.full(k, 100),
                          prefill={"folder": "output_lengths", "columns": cols,
                                   "use": {"tasks": False, "no_tasks": True}, "validation_mae": {}})
    index.output_lengths = means.to_dict()
    index.save(Storage(), str(m))

    q = load_dataset(Storage(), data).queries.select(["query_id", "text", "task"]).take(list(range(0, 120, 4)))
    pq.write_table(q.select(["query_id", "text"]), tmp_path / "q.parquet")
    pq.write_table(q, tmp_path / "q_tasks.parquet")
    prices = {p["name"]: p for p in index.pool["models"]}
    fs = load_features(Storage(), feats, q, cols)
    by_map = lin.predict(fs.columns)
    for src, tokens, by in (("q.parquet", by_map, "the length map on prefill features"),
                            ("q_tasks.parquet", np.full((30, k), 7.0), "each target's mean")):
        out = tmp_path / src.split(".")[0]
        capsys.readouterr()
        assert main(["route", "--queries", str(tmp_path / src), "--model", str(m), "--out", str(out)]) == 0
        routes = pq.read_table(out / "routes")
        assert routes.column("query_id").to_pylist() == q.column("query_id").to_pylist()
        chosen = [index.targets.index(t) for t in routes.column("model").to_pylist()]
        want = [len(text) / CHARS_PER_TOKEN * prices[index.targets[c]]["price_in_per_mtok"] / 1e6
                + tokens[i, c] * prices[index.targets[c]]["price_out_per_mtok"] / 1e6
                for i, (text, c) in enumerate(zip(q.column("text").to_pylist(), chosen))]
        np.testing.assert_allclose(routes.column("est_cost_usd").to_numpy(), want, rtol=1e-4)
        tally = json.loads((out / "tally.json").read_text())
        assert ("a ridge on prefill features" in tally["cost_model"]) and "queries without a task" in tally["cost_model"]
        assert tally["output_tokens_by"] == by
    assert np.ptp(by_map, axis=0).max() > 10  # the map tells the queries apart
