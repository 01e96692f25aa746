"""submit: a stage as a Ray Job on a real head started with `ray start --head` on loopback; the
queries and the routes in the moto S3 server. The head gets the S3 settings in its environment, as
a cluster node gets its identity: the submission itself carries no credential."""

import json
import os
import sys

import pytest

from jobs.cli import main
from router_core.dataset import load_dataset
from router_core.storage import Storage
from tests.integration.conftest import ray_head as start_head


@pytest.fixture(scope="module")
def ray_head(s3_server):
    """A head started with `ray start --head` on loopback, token auth off (tests only)."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    env.pop("RAY_ADDRESS", None)
    with start_head(env) as (_, address):
        yield address, env


def test_submitted_route_writes_its_routes_to_s3(ray_head, trained, s3_server, bucket, capsys, monkeypatch):
    address, env = ray_head
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    data, feats, model, _ = trained
    st = Storage(endpoint_url=s3_server)
    st.write_table(load_dataset(Storage(), data).queries, f"s3://{bucket}/in/q.parquet")
    out = f"s3://{bucket}/routes/submitted"
    capsys.readouterr()
    code = main(["submit", "--address", address, "--python", sys.executable, "--timeout", "600", "route", "--",
                 "--queries", f"s3://{bucket}/in/q.parquet", "--model", model, "--out", out,
                 "--set", "ray.num_cpus=null"])
    cap = capsys.readouterr()
    printed = cap.out
    assert code == 0, (printed[-3000:], cap.err[-2000:])
    assert "submitted route as Ray job" in printed and "SUCCEEDED" in printed
    assert "120 queries in = 120 routed + 0 rejected" in printed  # the job's own log, followed
    run = json.loads(st.read_text(f"{out}/run.json"))
    assert run["status"] == "complete" and run["routed"] == 120
    assert st.read_table(f"{out}/routes").num_rows == 120


def test_submit_exits_as_the_stage_did_rejected_rows_bad_input_or_a_crash(ray_head, tmp_path, capsys, monkeypatch):
    """1 for a job done with rejected rows, 2 for bad input, 3 for a crash: a scheduler (the nightly
    CronJob's pod) can tell a night with one bad row from a night that did not run."""
    address, _ = ray_head
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    src, pool = tmp_path / "rb.csv", tmp_path / "pool.yaml"
    src.write_text("sample_id,prompt,eval_name,m1,m2,m1|total_cost,m2|total_cost,split\n"
                   "a,Q1,arc,1.0,0.0,0.001,0.01,train\nb,Q2,arc,1.0,7.0,0.001,0.01,test\n")
    pool.write_text("models:\n- {name: m1, price_in_per_mtok: 1, price_out_per_mtok: 2}\n"
                    "- {name: m2, price_in_per_mtok: 5, price_out_per_mtok: 9}\n")
    base = ["submit", "--address", address, "--timeout", "300"]
    rejected = main([*base, "--python", sys.executable, "import", "--", "routerbench", str(src),
                     "--out", str(tmp_path / "ds"), "--pool", str(pool)])
    assert rejected == 1, capsys.readouterr().out[-2000:]  # done: 1 outcome rejected (score 7.0), the rest imported
    assert "FAILED (exit 1)" in capsys.readouterr().out
    assert main([*base, "--python", sys.executable, "validate", "--", "/nonexistent/dataset"]) == 2  # bad input
    crash = tmp_path / "crash.sh"  # an interpreter that dies at once: a bare exit 1, no stage ever ran
    crash.write_text("#!/bin/sh\necho 'Traceback (most recent call last): simulated' >&2\nexit 1\n")
    crash.chmod(0o755)
    assert main([*base, "--python", str(crash), "validate", "--", "/nonexistent/dataset"]) == 3
    assert "FAILED (exit 1)" in capsys.readouterr().out


def test_credentials_are_never_put_in_a_submission(capsys):
    assert main(["submit", "--address", "http://127.0.0.1:1", "--env", "AWS_SECRET_ACCESS_KEY", "route", "--",
                 "--queries", "q", "--model", "m", "--out", "o"]) == 2
    assert "looks like a credential" in capsys.readouterr().err


def test_unknown_stage_is_refused(capsys):
    assert main(["submit", "--address", "http://127.0.0.1:1", "frobnicate"]) == 2
    assert "unknown stage" in capsys.readouterr().err
