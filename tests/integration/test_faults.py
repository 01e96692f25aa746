"""Faults injected into real parts: the S3 server stopped mid-job, an extraction actor killed, the
whole job killed and rerun. Each test checks that nothing is lost or duplicated and that a failure
is one clear line that leaves nothing a rerun would take for complete."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from router_core.dataset import Dataset, load_dataset, save_dataset
from router_core.errors import StorageError
from router_core.storage import Storage
from tests.integration.conftest import _free_port

REPO = Path(__file__).resolve().parents[2]


class Moto:
    """A moto S3 server of this test's own, on a fixed port, that can be stopped and started again
    (moto keeps its buckets in the process, so a restart loses nothing, as a real server would not)."""

    def __init__(self):
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = None

    def start(self):
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint).create_bucket(Bucket=name)

    def stop(self):
        self.server.stop()


@pytest.fixture
def moto(s3_server):  # s3_server: the session's credentials in the environment
    m = Moto()
    m.start()
    yield m
    try:
        m.stop()
    except Exception:  # noqa: BLE001 - already stopped by the test
        pass


class RetryWatch(logging.Handler):
    """Sets an event when the storage layer logs that it will try a call again."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.retried = threading.Event()

    def emit(self, record):
        if record.name == "router_core.storage" and " failed (" in record.getMessage():
            self.retried.set()


def test_a_write_survives_a_server_restart_and_an_outage_fails_in_one_line(moto):
    moto.bucket("faults")
    st = Storage(endpoint_url=moto.endpoint, attempts=8, backoff_s=0.2)
    st.write_text("s3://faults/a.txt", "before")
    watch = RetryWatch()
    logging.getLogger("router_core.storage").addHandler(watch)
    try:
        moto.stop()

        def restart():  # back only once the writer has really failed and is waiting to try again
            assert watch.retried.wait(30)
            moto.start()

        t = threading.Thread(target=restart)
        t.start()
        st.write_text("s3://faults/b.txt", "during the outage")
        t.join()
    finally:
        logging.getLogger("router_core.storage").removeHandler(watch)
    assert watch.retried.is_set()
    assert st.read_text("s3://faults/a.txt") == "before"
    assert st.read_text("s3://faults/b.txt") == "during the outage"

    moto.stop()  # for good this time
    quick = Storage(endpoint_url=moto.endpoint, attempts=3, backoff_s=0.1)
    with pytest.raises(StorageError) as e:
        quick.write_text("s3://faults/c.txt", "never")
    assert len(str(e.value).splitlines()) == 1
    assert str(e.value).startswith("s3://faults/c.txt: write failed 3 times") and "unreachable" in str(e.value)
    moto.start()
    assert not st.exists("s3://faults/c.txt")  # no partial object either


def _route_args(moto, bucket, model, out, *extra):
    return ["route", "--queries", f"s3://{bucket}/in", "--model", model, "--out", out,
            "--set", f"storage.endpoint_url={moto.endpoint}", *extra]


def _put_queries(st: Storage, data: str, uri: str) -> pa.Table:
    q = load_dataset(Storage(), data).queries.select(["query_id", "text"])
    st.write_table(q.slice(0, 60), f"{uri}/part-0.parquet")
    st.write_table(q.slice(60), f"{uri}/part-1.parquet")
    return q


def test_route_survives_an_s3_restart_mid_job_and_a_failed_run_reruns(trained, moto, capsys, monkeypatch):
    import jobs.route

    data, _, model, _ = trained
    # The job waits after claiming its output until the server is down (`down`), so its next S3 call
    # meets the outage however fast the rest of the job is (a race the test once lost under load).
    down, encode = threading.Event(), jobs.route.encode
    down.set()

    def gated(*args, **kwargs):
        assert down.wait(120), "the server was never stopped"
        return encode(*args, **kwargs)

    monkeypatch.setattr(jobs.route, "encode", gated)
    moto.bucket("faults-route")
    st = Storage(endpoint_url=moto.endpoint, attempts=8, backoff_s=0.2)
    _put_queries(st, data, "s3://faults-route/in")
    ref_out = "s3://faults-route/reference"
    assert main(_route_args(moto, "faults-route", model, ref_out)) == 0
    reference = st.read_table(f"{ref_out}/routes").sort_by("query_id")

    # 1. The server goes down once the job has claimed its output, and comes back only after the
    #    job has failed a call and is waiting to try it again: the job completes, same routes.
    out = "s3://faults-route/restarted"
    watch = RetryWatch()
    logging.getLogger("router_core.storage").addHandler(watch)

    def outage():
        while not st.exists(f"{out}/run.json"):
            time.sleep(0.05)
        moto.stop()
        down.set()
        watch.retried.wait(120)
        moto.start()

    down.clear()
    t = threading.Thread(target=outage)
    t.start()
    try:
        code = main(_route_args(moto, "faults-route", model, out, "--set", "storage.backoff_s=0.3"))
    finally:
        t.join()
        logging.getLogger("router_core.storage").removeHandler(watch)
    assert code == 0 and watch.retried.is_set()
    got = st.read_table(f"{out}/routes").sort_by("query_id")
    assert got.drop_columns(["run_id"]).equals(reference.drop_columns(["run_id"]))
    assert json.loads(st.read_text(f"{out}/run.json"))["status"] == "complete"

    # 2. The server stays down: one line, exit 3 (FAILED), and run.json still says running, so nothing
    #    (nightly's watermark, a reader) takes the folder for complete. Back up, the rerun completes.
    out = "s3://faults-route/failed"

    def down_for_good():
        while not st.exists(f"{out}/run.json"):
            time.sleep(0.05)
        moto.stop()
        down.set()

    down.clear()
    t = threading.Thread(target=down_for_good)
    t.start()
    capsys.readouterr()
    code = main(_route_args(moto, "faults-route", model, out, "--set", "storage.attempts=3",
                            "--set", "storage.backoff_s=0.1"))
    t.join()
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the job's log lines (and the retry warnings), one error line
    assert code == 3 and "Traceback" not in err
    assert last.startswith("prefill-router route: error: s3://faults-route/failed/") and "storage unreachable" in last
    moto.start()
    assert json.loads(st.read_text(f"{out}/run.json"))["status"] == "running"
    assert main(_route_args(moto, "faults-route", model, out)) == 0
    assert st.read_table(f"{out}/routes").sort_by("query_id").drop_columns(["run_id"]).equals(
        reference.drop_columns(["run_id"]))


N_FAULT = 40  # queries of the extraction fault tests: 10 parts of 4, so a kill lands with most still to do


@pytest.fixture(scope="module")
def lr_fault(small_lr, tmp_path_factory) -> tuple[str, str, set[str]]:
    """The first N_FAULT of small_lr's queries; small_lr's features, an uninterrupted run of the same
    settings, are the reference for them."""
    data, feats = small_lr
    ds = load_dataset(Storage(), data)
    q = ds.queries.slice(0, N_FAULT)
    ids = set(q.column("query_id").to_pylist())
    o = ds.outcomes.filter(pa.array([x in ids for x in ds.outcomes.column("query_id").to_pylist()]))
    root = str(tmp_path_factory.mktemp("lr-fault"))
    save_dataset(Storage(), root, Dataset(q, o, ds.pool))
    return root, feats, ids


def _extract_cmd(data: str, out: str, cache: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobs.cli", "extract", "--data", data, "--out", out,
            "--set", f"extract.cache_dir={cache}", "--set", "extract.layers=[0,4,8,12,16]",
            "--set", "extract.max_length=256", "--set", "extract.rows_per_task=4", "--set", "ray.num_cpus=2",
            "--set", "extract.dtype=float32", *extra]  # small_lr's settings: its features are the reference


def _feature_rows(out: str) -> list[tuple[str, str]]:
    m = json.loads(Path(out, "manifest.json").read_text())
    rows = []
    for name in m["parts"]:
        t = pq.read_table(Path(out, "parts", name), columns=["query_id", "text_hash"])
        rows += list(zip(t.column("query_id").to_pylist(), t.column("text_hash").to_pylist()))
    return rows


@pytest.mark.slow  # two jobs, each starting its own Ray and encoder (~60 s on 2 cores)
def test_extraction_killed_and_rerun_ends_with_every_row_once(lr_fault, encoder_cache, tmp_path):
    """The whole extract job (its own Ray) killed once some parts are written: the rerun extracts
    only what is missing, and the folder ends with every row exactly once, equal to an
    uninterrupted run's. The fast tier holds the same contract in two parts: a job that fails
    mid-run and its rerun (test_extract_slow.py, the stuck actor), and a rerun over what a killed
    job leaves, a lost part and a half-written file (test_extract_job.py, test_rerun_resumes...)."""
    data, feats, ids = lr_fault  # feats: the uninterrupted run of the same settings
    out = str(tmp_path / "feats")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    job = subprocess.Popen(_extract_cmd(data, out, encoder_cache), cwd=REPO, env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and job.poll() is None:
            parts = Path(out, "parts")
            if parts.exists() and len([p for p in parts.iterdir() if p.suffix == ".parquet"]) >= 3:
                break
            time.sleep(0.2)
        assert job.poll() is None, "the job ended before it could be killed"
        os.killpg(job.pid, signal.SIGKILL)  # the driver, its Ray, its actors: everything
        job.wait(30)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    written = len(list(Path(out, "parts").glob("*.parquet")))
    committed = sum(e["rows"] for e in json.loads(Path(out, "manifest.json").read_text())["parts"].values())
    done = subprocess.run(_extract_cmd(data, out, encoder_cache), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if "input =" in x)
    # It resumed from exactly the rows the manifest listed when the job was killed, and encoded the rest.
    assert f"{N_FAULT} input = {committed} reused + {N_FAULT - committed} extracted + 0 rejected" in line, line
    assert 0 < committed < N_FAULT and written >= 3
    rows = _feature_rows(out)
    assert len(rows) == len(set(rows)) == N_FAULT  # every row once
    assert sorted(rows) == sorted(r for r in _feature_rows(feats) if r[0] in ids)
    from router_core.features import load_features

    q = load_dataset(Storage(), data).queries
    a = load_features(Storage(), out, q)
    b = load_features(Storage(), feats, q)
    assert a.present.all() and b.present.all()
    for c in b.columns:
        assert abs(a.columns[c] - b.columns[c]).max() <= 2e-3 * (abs(b.columns[c]).max() + 1)



def _descendants(root: int, title: str) -> list[int]:
    """Live descendants of process ``root`` whose command line (a Ray worker's shows its actor's
    class) contains ``title``."""
    parent, cmds = {}, {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
            cmds[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[0] != "Z":
            parent[int(d.name)] = int(fields[1])
    below, todo = set(), [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in below]
        below.update(kids)
        todo += kids
    return sorted(p for p in below if title in cmds.get(p, ""))


def _run_killing(cmd: list[str], log_path: Path, title: str, ready, how_many: int = 0
                 ) -> tuple[int, str, list[int]]:
    """Run the job ``cmd`` in a session of its own; once ``ready()`` holds, SIGKILL its descendant
    processes whose command line shows ``title`` (the last ``how_many``, or all); let it finish.
    Returns its exit code, its output (kept in a file: a pipe left unread would stall it) and the
    pids killed."""
    with open(log_path, "w") as out:
        job = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), start_new_session=True,
                               stdout=out, stderr=subprocess.STDOUT)
        killed: list[int] = []
        try:
            deadline = time.time() + 600
            while time.time() < deadline and job.poll() is None and not killed:
                if ready():
                    killed = _descendants(job.pid, title)[-how_many:]
                    for pid in killed:
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
            assert killed, f"no {title} process was found to kill before the job ended"
            job.wait(900)
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
    return job.returncode, log_path.read_text(), killed


def test_an_actor_killed_inside_a_running_extraction_is_replaced(lr_fault, encoder_cache, tmp_path):
    """SIGKILL the encoder actor once two parts are written: Ray restarts it and retries its block;
    the same run completes with every row exactly once."""
    data, feats, ids = lr_fault
    out = str(tmp_path / "feats")
    parts = Path(out, "parts")

    def two_parts_written() -> bool:
        return parts.exists() and len([p for p in parts.iterdir() if p.suffix == ".parquet"]) >= 2

    rc, log, _ = _run_killing(_extract_cmd(data, out, encoder_cache), tmp_path / "job.log", "ExtractActor",
                              two_parts_written)
    assert rc == 0, log[-3000:]
    line = next(x for x in log.splitlines() if "input =" in x)
    assert f"0 reused + {N_FAULT} extracted" in line  # one run, nothing left for a rerun
    rows = _feature_rows(out)
    assert len(rows) == len(set(rows)) == N_FAULT
    assert sorted(rows) == sorted(r for r in _feature_rows(feats) if r[0] in ids)


def test_a_lost_train_worker_is_replaced_and_training_resumes(trained, tmp_path):
    """SIGKILL a Ray Train worker once the ensemble's first member is checkpointed: the worker group
    restarts (train.max_failures), resumes after that member, and the model is written."""
    data, feats, model, _ = trained
    ckpt, out = tmp_path / "ckpt", tmp_path / "model"
    sets = ["train.n_trials=1", "train.seeds=3", "train.keep=2", "train.max_epochs=60", "train.patience=60",
            "train.batch_size=16", "train.max_layers=1", "baselines.semantic_trials=1", "baselines.knn_k=[3]",
            f"train.storage_path={ckpt}", "train.collective_timeout_s=20", "ray.num_cpus=2",
            "train.residual=false", "train.distil_width=0", "train.cross_fit=0",  # the trunk's ensemble is what this test kills
            f"baselines.semantic_features={model}/semantic_features",  # the shared model's embeddings: a full hit
            "baselines.in_process=true"]  # the semantic MLP in the driver: only the trunk's workers are killed
    cmd = [sys.executable, "-m", "jobs.cli", "train", "--data", data, "--features", feats, "--out", str(out),
           *[x for s in sets for x in ("--set", s)]]
    # One worker, once member 1 of 3 is committed.
    rc, log, _ = _run_killing(cmd, tmp_path / "job.log", "TrainWorker",
                              lambda: _registered(ckpt / "trunk-prefill_trunk-ensemble"), how_many=1)
    assert rc == 0, log[-3000:]
    index = json.loads((out / "manifest.json").read_text())
    assert "prefill_trunk" in index["routers"]
    # Resumed, not restarted: member 1 is saved once (a fresh start would save it again), and every
    # later checkpoint holds at least as many members. A member whose checkpoint the worker wrote but
    # Ray Train had not yet registered when the kill came is fitted once more: [1, 2, 2, 3] is a resume.
    members = [len(json.loads((d / "losses.json").read_text()))
               for d in sorted((ckpt / "trunk-prefill_trunk-ensemble").glob("checkpoint_2*"))]
    assert members[0] == 1 and members.count(1) == 1, (members, log[-3000:])
    assert members == sorted(members) and set(members) == {1, 2, 3} and len(members) <= 4, (members, log[-3000:])
    # baselines.in_process: the semantic MLP left no Ray Train run beside the trunk's.
    runs = sorted(p.name for p in ckpt.iterdir() if p.is_dir())
    assert "trunk-prefill_trunk-ensemble" in runs and not [r for r in runs if "semantic" in r], runs


def _registered(run_dir: Path) -> bool:
    """Ray Train has committed at least one checkpoint of this run (its folder alone is not enough:
    a worker lost between writing it and reporting it leaves it out, and the member is trained again)."""
    snap = run_dir / "checkpoint_manager_snapshot.json"
    try:
        return bool(json.loads(snap.read_text()).get("checkpoint_results"))
    except (OSError, ValueError):
        return False


def test_a_prediction_task_killed_inside_a_running_route_is_retried(encoder_cache, tmp_path):
    """SIGKILL a route prediction task's worker mid-job: Ray retries the task; the run completes with
    every query routed once and the same routes as an uninterrupted run."""
    sys.path.insert(0, str(REPO / "tests" / "bench"))
    from bench_route import build  # synthetic queries, features and a model (speed-sized, not quality)

    from jobs.route import run_route
    from jobs.runtime import ensure_ray
    from router_core.config import Policy, load_config

    rows = 400_000
    build(tmp_path, rows, members=5, pca=128, student=128, cache_dir=encoder_cache)
    cfg = load_config(None, ["ray.num_cpus=2", f"extract.cache_dir={encoder_cache}"])
    ensure_ray(cfg)
    clean = run_route(cfg, str(tmp_path / "queries"), str(tmp_path / "model"), str(tmp_path / "clean"), Policy(),
                      router_name="prefill_trunk")
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set() and not killed:
            pids = _descendants(os.getpid(), "predict_parts")  # the worker's title while it runs the task
            if pids:
                time.sleep(0.5)  # well inside the task's work
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    try:
        run = run_route(cfg, str(tmp_path / "queries"), str(tmp_path / "model"), str(tmp_path / "killed"),
                        Policy(), router_name="prefill_trunk")
    finally:
        stop.set()
        th.join(5)
    assert killed, "no prediction task was seen to kill"
    assert run.routed == rows and run.rejected == 0 and run.reconciles()
    a = pq.read_table(tmp_path / "clean" / "routes")
    b = pq.read_table(tmp_path / "killed" / "routes")
    assert b.column("query_id").to_pylist() == a.column("query_id").to_pylist()  # each once, in input order
    assert b.column("model").equals(a.column("model")) and clean.run_id == run.run_id
