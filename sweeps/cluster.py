"""Ray for the driver: attach to a cluster or start an embedded local Ray on loopback, and
refuse trials no node could run."""

from __future__ import annotations

import logging
import os
import sys
import time

from sweeps.errors import UsageError, one_line


def connect(ray_cfg: dict) -> bool:
    """Attach to the configured cluster or start an embedded local Ray; True if we started it."""
    address = ray_cfg["address"] or os.environ.get("RAY_ADDRESS")
    loopback = ray_cfg["host"] in ("127.0.0.1", "localhost", "::1")
    if not address and loopback:
        _loopback_only()
    import ray

    quiet = dict(log_to_driver=False, logging_level=logging.ERROR, include_dashboard=False)
    if address:
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UsageError(f"ray.address: cannot connect to the Ray cluster at {address}: {one_line(exc)}") from None
        return False
    extra = {} if loopback else {"_node_ip_address": ray_cfg["host"]}
    ray.init(address="local", num_cpus=ray_cfg["num_cpus"], num_gpus=ray_cfg["num_gpus"], **quiet, **extra)
    return True


def stop_embedded() -> None:
    """Stop the embedded Ray that ``connect`` started in this process.

    Ray 2.60's shutdown stops the GCS before the autoscaler monitor, whose SIGTERM handler then
    reports to the stopped GCS until Ray SIGKILLs it a second later, on every run. The monitor
    has nothing to scale on an embedded Ray, so it is stopped first.
    """
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    if node is not None and hasattr(node, "kill_monitor"):
        node.kill_monitor(check_alive=False)
    ray.shutdown()


def check_address(ray_cfg: dict) -> None:
    """Refuse a cluster address (host:port) that nothing answers on, before anything starts
    (Ray itself would retry for minutes)."""
    import socket

    address = ray_cfg["address"] or os.environ.get("RAY_ADDRESS")
    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"ray.address: expected host:port, auto or a ray:// URL, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        raise UsageError(f"ray.address: nothing answers at {address} ({exc.strerror or one_line(exc)})") from None


def _loopback_only() -> None:
    """Make Ray 2.60 advertise and bind 127.0.0.1 (it otherwise resolves it to the outward IP).

    With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray treats the machine as single-node: every
    server of the embedded cluster (GCS, raylet, workers) listens on loopback only.
    """
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None and os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0":
        constants.ENABLE_RAY_CLUSTER = False


def check_resources(ray_cfg: dict, point_bytes: int) -> None:
    """Refuse, before anything is queued, trials that no node of the cluster could ever run —
    after waiting up to ``ray.wait_for_resources_s`` for nodes that can to join (workers that
    start with the job, on KubeRay or SLURM)."""
    deadline = time.monotonic() + ray_cfg.get("wait_for_resources_s", 0.0)
    while (problem := _resource_problem(ray_cfg, point_bytes)) is not None:
        if time.monotonic() >= deadline:
            raise UsageError(problem)
        time.sleep(2.0)


def _resource_problem(ray_cfg: dict, point_bytes: int) -> str | None:
    """Why no live node of the cluster can run a trial now (None if one can)."""
    import ray

    from sweeps.store import size_text

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpus, gpus = ray_cfg["cpus_per_trial"], ray_cfg["gpus_per_trial"]
    most_gpus = max((r.get("GPU", 0.0) for r in nodes), default=0.0)
    most_cpus = max((r.get("CPU", 0.0) for r in nodes), default=0.0)
    most_memory = max((r.get("memory", 0.0) for r in nodes), default=0.0)
    if gpus > 0 and most_gpus == 0:
        return (f"ray.gpus_per_trial: {gpus:g} GPU per trial asked for, but the Ray cluster has no GPU; "
                "use ray.gpus_per_trial=0 to train on CPUs")
    if gpus > most_gpus:
        return f"ray.gpus_per_trial: {gpus:g} GPUs per trial, but no node has more than {most_gpus:g}"
    if cpus > most_cpus:
        return f"ray.cpus_per_trial: {cpus:g} CPUs per trial, but no node has more than {most_cpus:g}"
    if most_memory and point_bytes > most_memory:
        return (f"model: one point needs about {size_text(point_bytes)} to train, more than any node "
                f"of the cluster has ({size_text(most_memory)}); make model.n_features or "
                "train.batch_size smaller")
    return None
