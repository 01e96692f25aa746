"""submit: a stage as a Ray Job on a real head started with `ray start --head` on loopback; the
queries and the routes in the moto S3 server. The head gets the S3 settings in its environment, as
a cluster node gets its identity: the submission itself carries no credential."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from jobs.cli import main
from router_core.dataset import load_dataset
from router_core.storage import Storage
from tests.integration.conftest import _free_port

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def ray_head(s3_server):
    """`ray start --head --block` in its own process group; stopped by signalling that group only
    (`ray stop` would stop every Ray on the machine, the test session's own included)."""
    port, dash = _free_port(), _free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    env.pop("RAY_ADDRESS", None)
    tmp = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    cmd = [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats",
           f"--temp-dir={tmp}", "--include-dashboard=true",
           # The session's own local Ray already holds the default agent ports: take free ones.
           f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
           f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:  # the Jobs API answers once the dashboard is up
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"ray head did not start (exit {proc.poll()})") from None
                time.sleep(1)
        yield address, env
    finally:
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        if not os.environ.get("KEEP_RAY_HEAD_LOGS"):
            shutil.rmtree(tmp, ignore_errors=True)


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
    assert code == 1
    assert "FAILED" in capsys.readouterr().out


def test_credentials_are_never_put_in_a_submission(capsys):
    assert main(["submit", "--address", "http://127.0.0.1:1", "--env", "AWS_SECRET_ACCESS_KEY", "route", "--",
                 "--queries", "q", "--model", "m", "--out", "o"]) == 2
    assert "looks like a credential" in capsys.readouterr().err


def test_unknown_stage_is_refused(capsys):
    assert main(["submit", "--address", "http://127.0.0.1:1", "frobnicate"]) == 2
    assert "unknown stage" in capsys.readouterr().err
