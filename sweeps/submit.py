"""`tms submit`: run a sweep on a Ray cluster through Ray's Job Submission API.

The grid is validated here first (bad input never reaches the cluster); the job's runtime_env
carries the packages it runs (toymodels, and sweeps with its config tree) as ``py_modules`` —
from a source checkout or an installed wheel alike — and its entrypoint is the sweep command
(``python -m sweeps sweep``), which finds the cluster through the RAY_ADDRESS that Ray sets for
jobs. Token
authentication: when a token is available (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
~/.ray/auth_token) Ray's client sends it; it is never copied into the job, the store or any output.
"""

import os
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

from sweeps.errors import UsageError, one_line

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
NO_AGENT = "No available agent to submit job"
"""What Ray's job server answers (HTTP 500) while the head's job agent is still starting."""
AGENT_WAIT_S = 120.0
"""How long a submission is retried while the job server has no agent yet (a head just started)."""


def job_modules() -> list[str]:
    """Folders of the packages a sweep job runs (shipped to the cluster as py_modules)."""
    import toymodels

    import sweeps

    return [str(Path(m.__file__).resolve().parent) for m in (toymodels, sweeps)]


def _use_token_if_available() -> None:
    """Ray 2.60 clients send a token only with RAY_AUTH_MODE=token; set it when one exists."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    if (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def submit(address: str, overrides: list[str], wait: bool) -> int:
    from sweeps.plan import make_plan

    plan = make_plan(overrides)
    root = plan.config["store"]
    if "://" not in root and not os.path.isabs(root):
        raise UsageError(f"store: a cluster sweep writes from every node, so it needs shared storage: give an "
                         f"absolute path every node mounts or a URI (s3://…, gs://…), not {root!r}")
    if plan.config["ray"]["address"]:
        raise UsageError("ray.address: not used with tms submit (the job runs on the cluster of --address)")
    _use_token_if_available()
    import logging

    from ray.job_submission import JobSubmissionClient

    logging.getLogger("ray").setLevel(logging.ERROR)  # keep Ray's packaging chatter off the console

    try:
        client = JobSubmissionClient(address)
    except Exception as exc:  # connection refused, bad URL, authentication…
        raise UsageError(f"--address: cannot use the Ray job server at {address}: {one_line(exc)}") from None

    entrypoint = "python -m sweeps sweep " + " ".join(shlex.quote(o) for o in overrides)
    submission_id = f"tms-{plan.name}-{datetime.now():%Y%m%d-%H%M%S}"
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            job_id = client.submit_job(entrypoint=entrypoint, submission_id=submission_id,
                                       runtime_env={"py_modules": job_modules(), "excludes": ["**/__pycache__/"]},
                                       metadata={"sweep": plan.name})
            break
        except Exception as exc:
            if NO_AGENT in str(exc) and time.monotonic() < deadline:  # a head still starting its job agent
                time.sleep(2.0)
                continue
            raise UsageError(f"--address: the Ray job server at {address} refused the job: {one_line(exc)}") from None
    print(f"submitted {job_id}: {len(plan)} points of sweep {plan.name} -> {root}/{plan.name}",
          file=sys.stderr)
    if not wait:
        print(f"follow it with: ray job logs --address {address} --follow {job_id}", file=sys.stderr)
        return 0
    return _follow(client, job_id)


def _follow(client, job_id: str) -> int:
    """Print the job's log as it grows until the job ends; exit code 0 only if it succeeded."""
    shown = 0
    while True:
        status = str(client.get_job_status(job_id)).split(".")[-1]
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            sys.stdout.write(logs[shown:])
            sys.stdout.flush()
            shown = len(logs)
        if status in TERMINAL:
            print(f"job {job_id}: {status}", file=sys.stderr)
            return 0 if status == "SUCCEEDED" else 1
        time.sleep(1.0)
