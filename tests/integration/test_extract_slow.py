"""Extraction on a slow or stuck node: parts sized by the rate each actor measures and committed as
they finish; Ray Data's no-progress timeout does not end a job whose actors report rows; a stuck
actor fails the job within extract.stall_timeout_s, and a rerun encodes only what was not committed."""

import json
import time

import pytest

from jobs.extract import run_extract
from router_core.errors import FAILED, JobFailed
from router_core.storage import join
from tests.integration import slow_encoder
from tests.integration.slow_encoder import SlowEncoder
from tests.integration.test_extract_job import _cfg, _write_queries


@pytest.fixture(autouse=True)
def _hook_travels(ray_local):
    ray_local.cloudpickle.register_pickle_by_value(slow_encoder)  # the actors import nothing from tests/


def _parts(out: str) -> list[int]:
    """Rows of each committed part, in the order they were committed."""
    with open(join(out, "manifest.json")) as f:
        return [e["rows"] for e in json.load(f)["parts"].values()]


def test_a_slow_encoder_outlasts_ray_datas_no_progress_timeout(ray_local, encoder_cache, real_queries, tmp_path,
                                                                monkeypatch):
    ctx = ray_local.data.DataContext.get_current()
    monkeypatch.setattr(ctx, "execution_no_progress_timeout_s", 2)  # = RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S=2
    # The control: a plain Ray Data map whose one block takes 4 s dies of that timeout here.
    slow = ray_local.data.range(2, override_num_blocks=1).map_batches(lambda b: (time.sleep(4), b)[1])
    with pytest.raises(Exception, match="made no progress"):
        slow.materialize()
    # One Ray Data block of 20 queries at 0.4 s each on top of the encoder: 8 s and more.
    src = _write_queries(tmp_path / "q.parquet", real_queries[:20])
    out = str(tmp_path / "feats")
    cfg = _cfg(encoder_cache, rows_per_task=20, first_part_rows=2, part_seconds=2.0)
    run = run_extract(cfg, src, out, hook=SlowEncoder(delay_s=0.4))
    assert (run.input_rows, run.extracted, run.rejected) == (20, 20, 0)
    parts = _parts(out)
    # A small first part measured the rate; later parts hold about 2 s of work (~5 queries), not 1 or 20.
    assert parts[0] == 2 and sum(parts) == 20 and 3 <= len(parts) <= 9 and max(parts) > 2, parts


def test_a_stuck_actor_fails_within_the_stall_limit_and_a_rerun_resumes(ray_local, encoder_cache, real_queries,
                                                                         tmp_path):
    src = _write_queries(tmp_path / "q.parquet", real_queries[:30])
    out = str(tmp_path / "feats")
    stall = 8.0
    cfg = _cfg(encoder_cache, rows_per_task=30, first_part_rows=4, stall_timeout_s=stall)
    t0 = time.monotonic()
    with pytest.raises(JobFailed, match="extract.stall_timeout_s") as err:
        run_extract(cfg, src, out, hook=SlowEncoder(stuck_after=1))  # one part, then the actor hangs
    waited = time.monotonic() - t0
    assert err.value.exit_code == FAILED and "\n" not in str(err.value)
    assert waited < stall + 60, waited  # ended by the stall check, not left hanging (the actor sleeps a day)
    assert _parts(out) == [4]  # the part finished before the hang is committed
    run = run_extract(_cfg(encoder_cache, rows_per_task=30), src, out)
    assert (run.reused, run.extracted, run.rejected) == (4, 26, 0)
    assert sum(_parts(out)) == 30
