"""The store on object storage, for real: an S3 API server (moto, in server mode) on 127.0.0.1.

One sweep with `store=s3://…`: its driver is killed with SIGKILL mid-sweep (its workers left
alive), a new driver is refused while the dead one's lease lasts, then resumes and finishes it
with every row once; `tms status` and `tms analyze` read it from the bucket.
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import FAST, assert_every_row_once, end_session, read_store, tms, tms_background, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # a real sweep on Ray against a real S3 endpoint

SECRET = "s3secret-" + secrets.token_hex(12)
TTL = 5  # sweep.lease_ttl_s: how long a killed driver's lease keeps others out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3-compatible HTTP endpoint on 127.0.0.1 with one bucket; the environment that reaches it."""
    try:
        import boto3
        import moto.server  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"moto[server] is not installed ({exc}); `make install` installs it")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "tms-test",
           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        wait_for(lambda: _answers(port), 60, f"the S3 server on 127.0.0.1:{port}")
        boto3.client("s3").create_bucket(Bucket="tms")
        yield {"env": env, "port": port, "log": log}
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        end_session(server.pid)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def _objects(prefix: str) -> dict[str, bytes]:
    import boto3

    s3 = boto3.client("s3")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="tms", Prefix=prefix)
            for o in page.get("Contents", [])]
    return {k: s3.get_object(Bucket="tms", Key=k)["Body"].read() for k in keys}


def _done_markers(prefix: str) -> int:
    import boto3

    out = boto3.client("s3").list_objects_v2(Bucket="tms", Prefix=f"{prefix}/done/")
    return sum(1 for o in out.get("Contents", []) if o["Key"].endswith(".parquet")
               and not o["Key"].rsplit("/", 1)[1].startswith("."))


def test_a_sweep_on_s3_survives_kill_9_and_is_analysed_from_the_bucket(s3, tmp_path):
    uri = "s3://tms/runs"
    sweep_uri = f"{uri}/ons3"
    args = ["sweep", f"store={uri}", *FAST, "train.steps=600", "sweep.name=ons3", f"sweep.lease_ttl_s={TTL}",
            "data.density=1.0,0.1", "sweep.seeds=2", "sweep.points_per_trial=2",
            "ray.max_concurrent_trials=1"]
    a = tms_background(*args, log=tmp_path / "a.log")
    try:
        wait_for(lambda: _done_markers("runs/ons3") >= 1, 240, "the first commit to the bucket")
        os.kill(a.pid, signal.SIGKILL)  # the driver only: its Ray workers live on for a while
        a.wait(timeout=30)
        killed_at = _done_markers("runs/ons3")
        assert killed_at < 2, "the sweep finished before its driver could be killed"

        refused = tms(*args)  # at once: the dead driver's lease still holds
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert refused.stderr.startswith(f"error: sweep.name: sweep {sweep_uri} is already being run by pid {a.pid}")
        assert "lease expires in" in refused.stderr

        time.sleep(TTL)
        resumed = tms(*args)
    finally:
        end_session(a.pid)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming with" in resumed.stderr and "4 done, 0 diverged, 0 failed, 0 pending" in resumed.stderr

    s = read_store(sweep_uri)
    assert_every_row_once(s, points=4, steps=600)
    assert s["done"].generation.nunique() == 2, "commits of the killed driver and of the one that resumed"
    objects = _objects("runs/ons3/")
    names = list(objects)
    assert not [k for k in names if k.endswith(".tmp") or "/_staging/" in k], names
    assert "runs/ons3/.lock" not in objects, "the lease is released at exit"
    for part in ("metrics", "features", "weights"):
        parts = {k.rsplit("/part-", 1)[1][: -len(".parquet")] for k in names if k.startswith(f"runs/ons3/{part}/part-")}
        assert parts == set(s["done"].trial_key), f"{part}/ holds files of uncommitted trials"
    for key, data in objects.items():
        assert SECRET.encode() not in data, key
    assert SECRET not in resumed.stdout + resumed.stderr + (tmp_path / "a.log").read_text()

    status = tms("status", sweep_uri)
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("sweep ons3: 4 points: 4 done, 0 diverged, 0 failed, 0 pending")
    assert "driver: not running" in status.stdout

    out = tmp_path / "analysis"
    analysed = tms("analyze", sweep_uri, "--out", str(out), "--wandb", "disabled")
    assert analysed.returncode == 0, analysed.stdout + analysed.stderr
    assert list(out.glob("*.png")) and (out / "summary.json").exists()


def test_credentials_in_a_store_uri_are_refused_without_echoing_them(store):
    proc = tms("sweep", f"store=s3://AKIAEXAMPLE:{SECRET}@tms/runs", *FAST, "sweep.name=creds")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: store: credentials do not belong in the s3:// URI")
    assert SECRET not in proc.stderr and "AKIAEXAMPLE" not in proc.stderr
