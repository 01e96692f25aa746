"""Session fixtures: a real S3-compatible server (moto, HTTP on loopback) and one local Ray."""

from __future__ import annotations

import os
import socket

import pytest

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

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()
