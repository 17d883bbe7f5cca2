"""The KubeRay RayJob and the image it runs: its entrypoint composes the same plan as the local
command, and the manifest asks for what the docs promise (GPU workers, object storage, secrets
from Kubernetes Secrets). No Kubernetes cluster or Docker daemon runs here: docs/clusters.md
says what was and was not run."""

import shlex
import tomllib

import yaml

from conftest import ROOT, tms
from sweeps.plan import make_plan

MANIFEST = ROOT / "deploy" / "k8s" / "rayjob.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
LOCAL = ["experiment=intro"]  # what a researcher runs on a laptop: `tms sweep experiment=intro`


def _job() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def _entrypoint() -> list[str]:
    words = shlex.split(_job()["spec"]["entrypoint"])
    assert words[:2] == ["tms", "sweep"], words
    return words[2:]


def test_the_rayjob_entrypoint_composes_the_same_plan_as_the_local_command():
    remote, local = make_plan(_entrypoint()), make_plan(LOCAL)
    assert remote.grid_hash == local.grid_hash and remote.name == local.name
    assert remote.point_ids.tolist() == local.point_ids.tolist()
    assert [t.trial_key for t in remote.trials()] == [t.trial_key for t in local.trials()]
    assert remote.config["store"].startswith("s3://"), "the store is on object storage"
    assert remote.config["ray"]["gpus_per_trial"] > 0 and remote.config["ray"]["device"] == "cuda"
    assert remote.config["ray"]["wait_for_resources_s"] > 0, "GPU workers join after the driver starts"

    dry_remote, dry_local = tms("sweep", "--dry-run", *_entrypoint()), tms("sweep", "--dry-run", *LOCAL)
    assert dry_remote.returncode == 0 and dry_local.returncode == 0, dry_remote.stderr + dry_local.stderr
    assert dry_remote.stdout.split("; store:")[0] == dry_local.stdout.split("; store:")[0]


def test_the_manifest_runs_the_project_image_with_gpu_workers_and_secrets_from_kubernetes():
    job = _job()
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["activeDeadlineSeconds"] > 0
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    workers = [g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", "no trials on the head"
    assert all(int(w["resources"]["limits"]["nvidia.com/gpu"]) >= 1 for w in workers)
    images = {head["image"], *(w["image"] for w in workers)}
    assert images == {"REGISTRY/tms-sweeps:0.1.0"} and "REGISTRY/tms-sweeps:0.1.0" in DOCKERFILE.read_text()
    import ray

    assert cluster["rayVersion"] == ray.__version__, "the cluster's Ray is the one the image installs"
    for container in [head, *workers]:
        assert not container.get("env"), "no literal values: credentials come from Secrets"
        assert {s["secretRef"]["name"] for s in container["envFrom"]} == {"tms-s3", "tms-wandb"}


def test_the_image_holds_every_package_of_the_project():
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    copied = {line.split()[1] for line in DOCKERFILE.read_text().splitlines() if line.startswith("COPY ")}
    assert {p.rstrip("*") for p in packages["include"]} <= copied
    assert "pyproject.toml" in copied
