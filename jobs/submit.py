"""``submit``: run any stage as a Ray Job on a cluster, follow its logs, exit as the stage did (1 for
rejected rows, 2 for bad input, 3 for a failure: ``exit_code``).

The entrypoint is ``python -m jobs.cli STAGE ARGS...`` run in a copy of the working directory
(this repository, or ``--working-dir``) uploaded by Ray; the cluster's image provides the
dependencies (pyproject.toml). Environment variables named
by ``--env NAME`` are passed on, except credentials: S3 keys and tokens are refused here (the
cluster's nodes have their own identity), so they never appear in a job's submission.

Authentication: a cluster started with ``RAY_AUTH_MODE=token`` needs the token on the client; Ray
reads it from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (see README).
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from router_core.errors import BAD_INPUT, FAILED, INTERRUPTED, OK, REJECTED, REJECTED_LINE, ConfigError, JobFailed

SECRET_MARKERS = ("SECRET", "TOKEN", "PASSWORD", "CREDENTIAL", "ACCESS_KEY", "SESSION")
AGENT_WAIT_S = 300.0


@dataclass
class Submission:
    job_id: str
    status: str
    exit_code: int


def _env(names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        if any(m in name.upper() for m in SECRET_MARKERS):
            raise ConfigError(f"--env {name}: looks like a credential; jobs must get credentials from the "
                              "cluster's identity, never from the submission")
        if name in os.environ:
            out[name] = os.environ[name]
    return out


def exit_code(status: str, driver_exit_code: int | None, logs: str) -> int:
    """The job's own exit code, as the stage would have given it run here: 0 done; 1 done with rejected
    rows (only after the stage's REJECTED_LINE: a crashed interpreter exits 1 too); 2 bad input; 3
    anything else that failed; 130 stopped."""
    if status == "SUCCEEDED":
        return OK
    if status == "STOPPED":
        return INTERRUPTED
    if driver_exit_code == REJECTED and REJECTED_LINE in logs:
        return REJECTED
    return BAD_INPUT if driver_exit_code == BAD_INPUT else FAILED


def entrypoint(stage: str, args: list[str], python: str, stages: list[str]) -> str:
    if stage not in stages:
        raise ConfigError(f"submit: unknown stage {stage!r} (one of {', '.join(stages)})")
    return shlex.join([python, "-m", "jobs.cli", stage, *args])


def submit(address: str, stage: str, args: list[str], stages: list[str], working_dir: str | None = None,
           env: list[str] | None = None, follow: bool = True, timeout_s: float | None = None, python: str = "python",
           printer=print) -> Submission:
    """Submit ``stage`` (one of ``stages``, the CLI's table) with ``args``; follow it unless told not to."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    wd = Path(working_dir or Path(__file__).resolve().parents[1])
    if not (wd / "pyproject.toml").exists():
        raise ConfigError(f"--working-dir {wd}: no pyproject.toml (not a prefill-router checkout)")
    runtime_env = {"working_dir": str(wd), "env_vars": _env(env or []),
                   "excludes": [".cache", "out", ".pytest_cache", "__pycache__", "*.pyc"]}
    cmd = entrypoint(stage, args, python, stages)
    try:
        client = JobSubmissionClient(address)
    except Exception as e:  # connection and auth errors come as several types
        raise ConfigError(f"submit: cannot reach the Ray Jobs API at {address}: {str(e).splitlines()[0][:200]}") from None
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:  # a freshly started head answers "no available agent" until its job agent is up
        try:
            job_id = client.submit_job(entrypoint=cmd, runtime_env=runtime_env,
                                       metadata={"stage": stage, "submitted_by": "prefill-router"})
            break
        except RuntimeError as e:
            if "No available agent" not in str(e) or time.monotonic() > deadline:
                raise JobFailed(f"submit: the cluster refused the job: {str(e).splitlines()[0][:200]}") from None
            time.sleep(2.0)
    printer(f"submitted {stage} as Ray job {job_id} to {address}")
    if not follow:
        return Submission(job_id, "PENDING", 0)
    t0, shown = time.monotonic(), 0
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            printer(logs[shown:].rstrip("\n"))
            shown = len(logs)
        if status in terminal:
            break
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            client.stop_job(job_id)
            raise JobFailed(f"submit: job {job_id} did not finish in {timeout_s:.0f} s; stopped")
        time.sleep(1.0)
    name = str(status.value if hasattr(status, "value") else status)
    driver = getattr(client.get_job_info(job_id), "driver_exit_code", None)
    code = exit_code(name, driver, logs)
    printer(f"Ray job {job_id}: {name}" + (f" (exit {driver})" if driver is not None else ""))
    return Submission(job_id, name, code)
