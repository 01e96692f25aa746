"""Session fixtures: a real S3-compatible server (moto, HTTP on loopback), one local Ray, and a small
real dataset with its features and a model trained on it (shared by the learn and route tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import shared_file

# Keep every Ray socket on loopback; read when ray is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# Credentials for the loopback server only; real ones never appear in tests.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """Start moto's S3 server on 127.0.0.1; yields its endpoint URL. Env points AWS clients at it."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    old = {k: os.environ.get(k) for k in [*S3_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(S3_ENV, AWS_ENDPOINT_URL=endpoint)
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def bucket(s3_server, request):
    """A fresh bucket per test, named after it."""
    import boto3

    name = "t-" + request.node.name.lower().replace("_", "-")[:50].strip("-[]")
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name)
    client = boto3.client("s3", endpoint_url=s3_server)
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local Ray for the whole session (starting one costs seconds). Sees the S3 env."""
    import ray

    if ray.is_initialized():  # a test of another folder (tests/e2e) ran a job in this process first
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def small_lr(ray_local, encoder_cache, tmp_path_factory):
    """120 real LLMRouter training queries with their 9 models' outcomes, and their features."""
    import pyarrow as pa

    from jobs.cli import main
    from router_core import importers
    from router_core.dataset import Dataset, save_dataset
    from router_core.storage import Storage

    scores = shared_file("llmrouter-9/scores_wide.csv").read_text(encoding="utf-8")
    cands = shared_file("llmrouter-9/llm_candidates.json").read_text()
    full = importers.import_llmrouter(scores, cands).dataset
    q = full.queries.filter(pa.array([s == "train" for s in full.queries.column("split").to_pylist()]))
    q = q.take(list(range(0, q.num_rows, q.num_rows // 120))[:120])
    keep = set(q.column("query_id").to_pylist())
    o = full.outcomes.filter(pa.array([x in keep for x in full.outcomes.column("query_id").to_pylist()]))
    root = tmp_path_factory.mktemp("lr")
    data, feats = str(root / "data"), str(root / "features")
    save_dataset(Storage(), data, Dataset(q, o, full.pool))
    assert main(["extract", "--data", data, "--out", feats, "--set", f"extract.cache_dir={encoder_cache}",
                 "--set", "extract.layers=[0,4,8,12,16]", "--set", "extract.max_length=256",
                 "--set", "extract.dtype=float32"]) == 0  # one dtype on every machine: reruns compare to it
    return data, feats


# Two trials fitted at once (train.max_concurrent): two Ray Train runs side by side on the 2 CPUs.
# The choice of the served router on out-of-fold rows with 2 refits, not 5: the same path, fewer runs.
# On 80 training queries no router can promise half a point on a batch of 1000, even at tau 0, so by
# default the best single would serve; these tests are about what a served router does, so it serves
# at tau 0 (the fallback itself: tests/unit/test_selection.py and docs/routing.md's study).
TRAIN_SETS = ["train.n_trials=2", "train.seeds=3", "train.keep=2", "train.max_epochs=8", "train.patience=3",
              "train.batch_size=32", "train.max_layers=2", "baselines.semantic_trials=1", "baselines.knn_k=[3,5]",
              "train.max_concurrent=2", "train.cross_fit=2", "train.fallback_best_single=false"]
# The shared model is fitted in the driver (train.in_process): the tests that read it are about the model,
# route, evaluate and retrain; Ray Train's own path (data-parallel workers, checkpoints, a lost worker
# replaced) is test_faults.py::test_a_lost_train_worker_is_replaced_and_training_resumes, and two nodes
# (slow tier) run these same settings on Ray Train.
FIXTURE_SETS = [*TRAIN_SETS, "train.in_process=true"]


@pytest.fixture(scope="session")
def trained(small_lr, tmp_path_factory):
    """The same 120 queries with every third one moved to a test split, and a model trained on them."""
    import pyarrow as pa

    from jobs.cli import main
    from router_core.dataset import Dataset, load_dataset, save_dataset
    from router_core.storage import Storage

    data, feats = small_lr
    ds = load_dataset(Storage(), data)
    q = ds.queries
    split = pa.array(["test" if i % 3 == 0 else "train" for i in range(q.num_rows)])
    q = q.set_column(q.schema.get_field_index("split"), "split", split)
    root = tmp_path_factory.mktemp("trained")
    data2, model = str(root / "data"), str(root / "m")
    save_dataset(Storage(), data2, Dataset(q, ds.outcomes, ds.pool))
    args = [x for s in FIXTURE_SETS for x in ("--set", s)]
    assert main(["train", "--data", data2, "--features", feats, "--out", model, *args]) == 0
    return data2, feats, model, args


def assert_no_secret(s3_endpoint: str, bucket: str, *local_dirs: str) -> int:
    """No object in ``bucket`` and no file under ``local_dirs`` holds the planted S3 credentials.
    Returns how many files were searched (so a test can check it searched something)."""
    import boto3

    secrets = [S3_ENV["AWS_SECRET_ACCESS_KEY"].encode(), S3_ENV["AWS_ACCESS_KEY_ID"].encode()]
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    n = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            assert not any(s in body for s in secrets), f"s3://{bucket}/{obj['Key']} holds a credential"
            n += 1
    for d in local_dirs:
        for p in Path(d).rglob("*"):
            if p.is_file():
                assert not any(s in p.read_bytes() for s in secrets), f"{p} holds a credential"
                n += 1
    return n


RAY = str(Path(sys.executable).parent / "ray")


def _agent_ports() -> list[str]:
    """Free ports for a node's agents: another Ray on this machine (the session's own) holds the defaults."""
    return [f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
            f"--metrics-export-port={_free_port()}", f"--runtime-env-agent-port={_free_port()}"]


@contextlib.contextmanager
def ray_node(args: list[str], env: dict, ready, what: str, ip: str = "127.0.0.1", timeout_s: float = 120):
    """`ray start --block ARGS` on loopback address ``ip`` in its own process group until ``ready()``;
    stopped by signalling that group only (`ray stop` would stop every Ray here, the session's too).

    Several nodes on one machine take distinct loopback addresses (127.0.0.2, 127.0.0.3): in its
    multi-node mode Ray replaces 127.0.0.1 itself by the machine's external address."""
    cmd = [RAY, "start", "--block", f"--node-ip-address={ip}", "--disable-usage-stats", *args, *_agent_ports()]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{what} did not start (exit {proc.poll()})")
            time.sleep(1)
        yield proc
    finally:
        # `ray start --block` did not exit within 30 s of a SIGTERM to its group (Ray 2.60, 2026-12-07):
        # the SIGKILL is what stops the node; the SIGTERM only gives its processes a moment first.
        for sig, wait in ((signal.SIGTERM, 2), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break


@contextlib.contextmanager
def ray_head(env: dict, num_cpus: int = 2, ip: str = "127.0.0.1"):
    """A head on loopback with the dashboard (Jobs API, state API); yields (gcs address, dashboard URL)."""
    port, dash = _free_port(), _free_port()
    tmp = tempfile.mkdtemp(prefix="rh-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    url = f"http://{ip}:{dash}"

    def up() -> bool:  # the Jobs API answers once the dashboard is up (401 with token auth on)
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    args = ["--head", f"--port={port}", f"--num-cpus={num_cpus}", f"--dashboard-host={ip}",
            f"--dashboard-port={dash}", f"--temp-dir={tmp}", "--include-dashboard=true"]
    try:
        with ray_node(args, env, up, "ray head", ip):
            yield f"{ip}:{port}", url
    finally:
        if not os.environ.get("KEEP_RAY_HEAD_LOGS"):
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
