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


def test_a_failing_job_gives_a_failing_exit_code(ray_head, capsys, monkeypatch):
    address, _ = ray_head
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    code = main(["submit", "--address", address, "--python", sys.executable, "--timeout", "300", "validate", "--",
                 "/nonexistent/dataset"])
    assert code == 3  # the job could not finish (router_core.errors.FAILED)
    assert "FAILED" in capsys.readouterr().out


def test_credentials_are_never_put_in_a_submission(capsys):
    assert main(["submit", "--address", "http://127.0.0.1:1", "--env", "AWS_SECRET_ACCESS_KEY", "route", "--",
                 "--queries", "q", "--model", "m", "--out", "o"]) == 2
    assert "looks like a credential" in capsys.readouterr().err


def test_unknown_stage_is_refused(capsys):
    assert main(["submit", "--address", "http://127.0.0.1:1", "frobnicate"]) == 2
    assert "unknown stage" in capsys.readouterr().err
