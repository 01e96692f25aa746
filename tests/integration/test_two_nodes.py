"""Two Ray nodes on this machine, as a small cluster: a head (drivers, Jobs and state API) and a
second node that alone declares the custom resource `encoder`. Storage is the moto S3 server.
`extract`, `train` and `route` run as a user runs them against a cluster (the CLI in its own
process with RAY_ADDRESS, token auth on); the extraction actors and the train workers must run on
the second node (Ray's state API says where each ran), and what they read comes from S3 or the
node's own encoder cache, never from the driver's disk: each node and the driver have their own
PREFILL_ROUTER_CACHE, the data, features, model, Ray Train checkpoints and routes are all s3://."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from router_core import importers
from router_core.dataset import Dataset, save_dataset
from router_core.storage import Storage
from tests.conftest import REPO, shared_file
from tests.integration.conftest import TRAIN_SETS, _free_port, ray_head, ray_node

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(3600)]

# What each actor is, by its class name: Ray Data names a pool's class after its operator
# ("MapWorker(MapBatches(ExtractActor))"); Ray Train's workers are RayTrainWorker.
PLACED = {"ExtractActor": "extraction actor", "RayTrainWorker": "train worker"}


def _placed(cls: str) -> str | None:
    return next((what for key, what in PLACED.items() if key in cls), None)


def _dataset() -> Dataset:
    """60 real LLMRouter queries (every third one test) with their 9 models' outcomes."""
    scores = shared_file("llmrouter-9/scores_wide.csv").read_text(encoding="utf-8")
    cands = shared_file("llmrouter-9/llm_candidates.json").read_text()
    full = importers.import_llmrouter(scores, cands).dataset
    q = full.queries.filter(pa.array([s == "train" for s in full.queries.column("split").to_pylist()]))
    q = q.take(list(range(0, q.num_rows, q.num_rows // 60))[:60])
    q = q.set_column(q.schema.get_field_index("split"), "split",
                     pa.array(["test" if i % 3 == 0 else "train" for i in range(q.num_rows)]))
    keep = set(q.column("query_id").to_pylist())
    o = full.outcomes.filter(pa.array([x in keep for x in full.outcomes.column("query_id").to_pylist()]))
    return Dataset(q, o, full.pool)


STATE = """
import json, sys
from ray.util.state import list_actors, list_nodes
url = sys.argv[1]
nodes = [dict(id=n.node_id, state=n.state, resources=n.resources_total or {}) for n in list_nodes(address=url, detail=True)]
actors = [dict(cls=a.class_name, node=a.node_id) for a in list_actors(address=url, detail=True, limit=10000,
                                                                         raise_on_missing_output=False)]
print(json.dumps(dict(nodes=nodes, actors=actors)))
"""


def cluster_state(url: str, env: dict) -> dict:
    """Ray's state API as a client of the cluster sees it (its own process: it needs the token)."""
    res = subprocess.run([sys.executable, "-c", STATE, url], env=env, capture_output=True, text=True, timeout=60)
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cluster(s3_server, tmp_path_factory):
    """Head + second node; yields (gcs address, dashboard URL, env for clients, caches by role)."""
    root = tmp_path_factory.mktemp("two-nodes")
    caches = {role: root / f"cache-{role}" for role in ("head", "node2")}
    # Multi-node needs Ray's cluster mode (=1); each node on its own loopback address.
    base = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1", RAY_AUTH_MODE="token",
                RAY_AUTH_TOKEN=secrets.token_hex(32))
    base.pop("RAY_ADDRESS", None)
    with ray_head(dict(base, PREFILL_ROUTER_CACHE=str(caches["head"])), ip="127.0.0.2") as (gcs, url):
        def two_nodes() -> bool:
            try:
                return sum(n["state"] == "ALIVE" for n in cluster_state(url, base)["nodes"]) == 2
            except RuntimeError:  # the state API answers once the node has registered
                return False

        node2 = [f"--address={gcs}", "--num-cpus=2", '--resources={"encoder": 1}',
                 f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}"]
        with ray_node(node2, dict(base, PREFILL_ROUTER_CACHE=str(caches["node2"])), two_nodes, "second node",
                      ip="127.0.0.3"):
            client = dict(base, RAY_ADDRESS=gcs)
            yield gcs, url, client, caches


def _cli(env: dict, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "jobs.cli", *args], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=timeout)
    res.seconds = time.monotonic() - t0
    assert res.returncode == 0, f"{args[0]} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def test_extract_train_route_on_two_nodes(cluster, s3_server, bucket, capsys):
    gcs, url, env, caches = cluster
    st = Storage(endpoint_url=s3_server)
    data, feats, model, routes = (f"s3://{bucket}/{x}" for x in ("data", "features", "model", "routes"))
    ds = _dataset()
    save_dataset(st, data, ds)
    # The driver's cache already holds the converted encoder: a worker that read it would not convert.
    env["PREFILL_ROUTER_CACHE"] = str(REPO / ".cache" / "encoders-for-tests")
    common = ["--set", "extract.actor_resources={encoder: 1}", "--set", "extract.layers=[0,8,16]",
              "--set", "extract.max_length=128"]
    train_sets = [x for s in TRAIN_SETS for x in ("--set", s)]
    t = {}
    t["extract"] = _cli(env, "extract", "--data", data, "--out", feats, *common).seconds
    t["train"] = _cli(env, "train", "--data", data, "--features", feats, "--out", model, *common, *train_sets,
                      "--set", "train.worker_resources={encoder: 0.5}",
                      "--set", f"train.storage_path=s3://{bucket}/ray-train").seconds
    out = _cli(env, "route", "--queries", f"{data}/queries.parquet", "--model", model, "--out", routes)
    t["route"] = out.seconds
    n = ds.queries.num_rows
    assert f"{n} queries in = {n} routed + 0 rejected" in out.stdout
    assert st.read_table(f"{routes}/routes").num_rows == n
    assert json.loads(st.read_text(f"{routes}/run.json"))["status"] == "complete"
    assert st.list_files(f"s3://{bucket}/ray-train"), "Ray Train checkpoints must be on the shared storage"

    state = cluster_state(url, env)
    (second,) = [n["id"] for n in state["nodes"] if "encoder" in n["resources"]]
    where: dict[str, dict[str, int]] = {}
    for a in state["actors"]:
        if what := _placed(a["cls"]):
            role = "second node" if a["node"] == second else "head"
            where.setdefault(what, {}).setdefault(role, 0)
            where[what][role] += 1
    assert set(where) == set(PLACED.values()), f"actors seen: {where}"
    assert all(set(w) == {"second node"} for w in where.values()), f"placement: {where}"
    # The second node converted the encoder into its own cache; the head never needed it.
    assert list((caches["node2"] / "encoders").glob("smollm2-135m-*/model.safetensors"))
    assert not (caches["head"] / "encoders").exists()
    with capsys.disabled():
        print(f"\ntwo nodes: {', '.join(f'{k} {v:.0f} s' for k, v in t.items())}; actors by node: {where}")
