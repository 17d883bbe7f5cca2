"""SLURM for real: a one-node SLURM (Debian's slurm-wlm and munge) started by the test, the
documented batch script (deploy/slurm/tms-sweep.sbatch) submitted as a job array, its first
job cancelled mid-sweep, the second one finishing the sweep with every row once.

Everything — munged, slurmctld, slurmd, the jobs and their Ray — runs in a private network
namespace that has only a loopback interface (SLURM's daemons listen on every interface of
their namespace), and every process in it is killed at the end.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import FAST, ROOT, assert_every_row_once, kill_pids, processes, read_store, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # a real SLURM running real jobs

SCRIPT = ROOT / "deploy" / "slurm" / "tms-sweep.sbatch"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "unshare", "nsenter")

SLURM_CONF = """\
ClusterName=tmstest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d}/munge.sock
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
CommunicationParameters=EnableIPv6
KillWait=5
MinJobAge=600
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class Slurm:
    """A one-node SLURM in its own network namespace; `run` executes a command inside it."""

    def __init__(self, d: Path):
        self.d = d
        self.host = socket.gethostname().split(".")[0]  # slurmctld runs only on the host it names
        self.env = {**os.environ, "SLURM_CONF": str(d / "slurm.conf"),
                    "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
        self.holder = subprocess.Popen(["unshare", "--net", "--", "sh", "-c", "ip link set lo up && exec sleep 86400"],
                                       start_new_session=True)
        self.ns = f"/proc/{self.holder.pid}/ns/net"
        self.daemons: list[subprocess.Popen] = []

    def inside(self, *cmd: str) -> list[str]:
        return ["nsenter", f"--net={self.ns}", "--", *cmd]

    def run(self, *cmd: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.inside(*cmd), env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)

    def start(self) -> None:
        d = self.d
        for sub in ("state", "spool"):
            (d / sub).mkdir()
        (d / "munge.key").write_bytes(os.urandom(1024))
        os.chmod(d / "munge.key", 0o400)
        os.chmod(d, 0o700)
        (d / "slurm.conf").write_text(SLURM_CONF.format(d=d, host=self.host))
        wait_for(lambda: self.run("ip", "-o", "link", "show", "up").stdout.count(": lo:") == 1, 10, "loopback up")
        self._daemon("munged", "-F", "-f", f"--socket={d}/munge.sock", f"--key-file={d}/munge.key",
                     f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed")
        wait_for(lambda: (d / "munge.sock").exists(), 20, "munged")
        self._daemon("slurmctld", "-D", "-i")
        self._daemon("slurmd", "-D", "-N", self.host)
        wait_for(lambda: self.run("sinfo", "-h", "-o", "%T").stdout.strip() == "idle", 60, "an idle SLURM node")

    def _daemon(self, *cmd: str) -> None:
        log = open(self.d / f"{cmd[0]}.out", "w")
        self.daemons.append(subprocess.Popen(self.inside(*cmd), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True))

    def members(self) -> list[int]:
        """Every process of the namespace (the daemons, jobs, Ray), found by its network namespace."""
        try:
            mine = os.readlink(self.ns)
        except OSError:
            return []
        found = []
        for p in processes():
            try:
                if os.readlink(f"/proc/{p.pid}/ns/net") == mine:
                    found.append(p.pid)
            except OSError:
                continue
        return found

    def stop(self) -> None:
        try:
            self.run("scancel", "--full", "--user=root", timeout=20)
        except subprocess.TimeoutExpired:
            pass  # the controller is not answering: its jobs' processes are killed below all the same
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pids = [p for p in self.members() if p != self.holder.pid] + [p.pid for p in self.daemons]
            pids = [p for p in pids if os.path.exists(f"/proc/{p}")]
            if not pids:
                break
            kill_pids(pids)
            for proc in self.daemons:
                try:
                    proc.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    pass
            time.sleep(0.3)
        self.holder.kill()
        self.holder.wait(timeout=10)

    def job(self, job_id: str) -> dict:
        """`scontrol show job` of one job as a dict (JobState, ExitCode, …)."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout
        return dict(f.split("=", 1) for f in out.split() if "=" in f)


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [t for t in DAEMONS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"SLURM test needs {', '.join(missing)} (Debian: apt-get install slurm-wlm munge; "
                    "`make test` installs them)")
    if os.geteuid() != 0:
        pytest.skip("SLURM test runs its daemons as root in a private network namespace; not root here")
    probe = subprocess.run(["unshare", "--net", "--", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private network namespace here: unshare --net: {probe.stderr.strip()}")
    cluster = Slurm(Path(tempfile.mkdtemp(prefix="tmsslurm-")))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.d, ignore_errors=True)


def _done_markers(sweep_dir: Path) -> int:
    done = sweep_dir / "done"
    return len([p for p in done.glob("*.parquet") if not p.name.startswith(".")]) if done.exists() else 0


def test_an_array_job_finishes_a_sweep_whose_first_job_was_cancelled(slurm, tmp_path):
    store = tmp_path / "store"
    sweep_dir = store / "onslurm"
    ray_tmp = tempfile.mkdtemp(prefix="/tmp/tmsray-")  # short: Ray puts unix sockets under it
    args = [f"store={store}", *FAST, "train.steps=600", "sweep.name=onslurm",
            "data.density=1.0,0.3,0.1", "sweep.seeds=2", "sweep.points_per_trial=1"]
    env = {"TMS_RAY_HEAD_IP": "127.0.0.1", "TMS_RAY_TMP": ray_tmp}
    try:
        sub = slurm.run("sbatch", "--parsable", "--array=0-1%1", f"--chdir={tmp_path}",
                        f"--output={tmp_path}/job-%A_%a.log", str(SCRIPT), *args, env=env)
        assert sub.returncode == 0, sub.stderr
        job = sub.stdout.strip().split(";")[0]
        wait_for(lambda: _done_markers(sweep_dir) >= 1, 300, "the first commit of the first job")
        cancelled = slurm.run("scancel", f"{job}_0")
        assert cancelled.returncode == 0, cancelled.stderr
        wait_for(lambda: slurm.job(f"{job}_1").get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"), 400,
                 "the second job of the array to end")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    first, second = slurm.job(f"{job}_0"), slurm.job(f"{job}_1")
    logs = {i: (tmp_path / f"job-{job}_{i}.log").read_text() for i in (0, 1)}
    assert first["JobState"] == "CANCELLED", (first, logs[0])
    assert second["JobState"] == "COMPLETED" and second["ExitCode"] == "0:0", (second, logs[1])
    assert f"Ray head on {slurm.host} (127.0.0.1:" in logs[1] and "resuming with" in logs[1], logs[1]
    assert "6 done, 0 diverged, 0 failed, 0 pending" in logs[1], logs[1]
    tokens = [m for log in logs.values() for m in re.findall(r"\b[0-9a-f]{64}\b", log)]
    assert not tokens, "the job's Ray token (64 hex digits) must not reach its log"

    s = read_store(sweep_dir)
    assert_every_row_once(s, points=6, steps=600)
    assert s["done"].generation.nunique() == 2, "commits of both jobs"
    assert not (sweep_dir / "_staging").exists()
    for part in ("metrics", "features", "weights"):
        keys = {p.name[len("part-"):-len(".parquet")] for p in (sweep_dir / part).glob("part-*.parquet")}
        assert keys == set(s["done"].trial_key)
