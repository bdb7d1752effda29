"""Joining the Ray cluster: the one `ray job submit`/RAY_ADDRESS points at, or an embedded local one.

The embedded cluster binds to 127.0.0.1 and starts no dashboard unless asked: Ray's dashboard and job
API execute code, so they must not listen on a public interface by default (docs/design.md §5).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time

import ray

from r1ray.workers.placement import PlacementError

logger = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Ray starts idle worker processes ahead of the first tasks (one per CPU, up to the machine's cores). r1ray
# starts none of its workers from them: every role's actor gets a runtime environment of its own (its thread
# counts), which an idle worker of the job's environment cannot take. On 2 cores an embedded cluster started
# two such processes, importing Ray at start and holding 160 MB between them for the whole run.
NO_PRESTART = {"prestart_worker_first_driver": False, "enable_worker_prestart": False}


class ClusterUnreachable(ConnectionError):
    """Nothing accepts connections at the Ray address; the message names it and what to do."""


def wait_for_gcs(address: str, timeout_s: float) -> None:
    """Fail within `timeout_s` when a host:port address has no listener. Ray's own connect retries for
    minutes and ignores SIGTERM while it does; "auto" and "ray://" addresses are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or address.startswith("ray://") or not port.isdigit():
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=min(5.0, max(timeout_s, 0.1))).close()
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ClusterUnreachable(
                    f"ray.address {address}: nothing accepts connections there ({exc.strerror or exc}) after "
                    f"{timeout_s:g}s; start the head (`ray start --head --port {port}`), fix the address, or leave "
                    f"ray.address empty for a local cluster") from exc
            time.sleep(1.0)


def connect(address: str, *, num_cpus: int, needed_cpus: float, dashboard: bool, dashboard_host: str,
            namespace: str, connect_timeout_s: float = 30.0) -> str:
    """Connect to (or start) Ray; returns a short description of what was joined."""
    if ray.is_initialized():
        return "already connected"
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        wait_for_gcs(address, connect_timeout_s)
        ray.init(address=address, namespace=namespace, log_to_driver=True)
        return f"cluster at {address}"
    cpus = num_cpus or max(os.cpu_count() or 1, math.ceil(needed_cpus))
    # address="local" starts our own cluster even when a `ray start` head runs on this machine
    # (plain ray.init() would attach to it and ignore num_cpus).
    ray.init(address="local", num_cpus=cpus, namespace=namespace, include_dashboard=dashboard, dashboard_host=dashboard_host,
             _node_ip_address="127.0.0.1", log_to_driver=True, _system_config=NO_PRESTART,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "R1RAY_LOOPBACK": "1"}})
    # Checked after init: Ray 2.52+ reads RAY_AUTH_MODE, and Ray 2.60 turns token auth on by itself for the
    # clusters ray.init() starts when the variable is unset, so only Ray can say whether it is on.
    warning = dashboard_exposure_warning(dashboard, dashboard_host, token_auth_enabled())
    if warning:
        logger.warning(warning)
    return f"local cluster on 127.0.0.1 with {cpus} CPUs"


def check_local_gpus(placement) -> None:
    """A local cluster has this machine's GPUs and no others: a GPU pool on a machine without one can never
    be placed, so say so now rather than after the data is prepared (a remote cluster may add GPU nodes)."""
    gpu_pools = sorted({name for name in placement.roles.values() if placement.pools[name].device == "gpu"})
    if not gpu_pools:
        return
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return
    pool = gpu_pools[0]
    raise PlacementError(f"placement.pools.{pool}.device=gpu: this machine has no CUDA GPU and ray.address is "
                         f"empty (a local cluster on this machine); set placement.pools.{pool}.device=cpu, or run "
                         f"on a GPU cluster (ray.address=HOST:PORT, or `ray job submit`)")


def token_auth_enabled() -> bool:
    """Whether this process runs with Ray's token authentication (RAY_AUTH_MODE=token, as Ray resolved it)."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled
    except ImportError:  # Ray before 2.52 has no token authentication
        return False
    return bool(is_token_auth_enabled())


def dashboard_exposure_warning(dashboard: bool, host: str, token_auth: bool) -> str | None:
    """The warning for a dashboard reachable beyond this machine without a token; None when it is safe."""
    if not dashboard or host in LOOPBACK or token_auth:
        return None
    return (f"the Ray dashboard listens on {host} without token authentication: anyone who reaches it can run "
            f"code on this machine through the job API (export RAY_AUTH_MODE=token before starting, or set "
            f"ray.dashboard_host=127.0.0.1)")


def check_before_start(cfg) -> None:
    """What the machine can tell before a run writes anything: the cluster address, a local cluster's GPUs."""
    from r1ray.workers.placement import Placement

    check_address(cfg.ray.address)
    if starts_local_cluster(cfg.ray.address):
        check_local_gpus(Placement.from_config(cfg.placement))


def check_address(configured: str) -> None:
    """ray.address (or RAY_ADDRESS) must be HOST:PORT with a numeric port, 'auto', 'local' or a ray:// or
    http(s):// URL; ValueError naming the source otherwise (Ray's own message names neither, and comes after
    the run has written its data)."""
    source, address = ("ray.address", configured) if configured else ("RAY_ADDRESS", os.environ.get("RAY_ADDRESS", ""))
    if not address or address in ("auto", "local") or address.startswith(("ray://", "http://", "https://")):
        return
    host, sep, port = address.rpartition(":")
    if sep and host and port.isdigit() and 0 < int(port) < 65536:
        return
    why = f"port '{port}' is not a number from 1 to 65535" if sep and host else "it has no :PORT"
    raise ValueError(f"{source}: '{address}' is not HOST:PORT ({why}); give e.g. 10.0.0.1:6379, 'auto' on a Ray "
                     f"node, or ray://HOST:10001")


def starts_local_cluster(address: str) -> bool:
    """Whether `connect` would start a cluster on this machine (no address given, none joined yet)."""
    return not (address or os.environ.get("RAY_ADDRESS") or ray.is_initialized())


def connect_for(ray_cfg, placement) -> str:
    """`connect` with the config's `ray` section, sized for `placement` (a workers.placement.Placement)."""
    if starts_local_cluster(ray_cfg.address):
        check_local_gpus(placement)
    return connect(ray_cfg.address, num_cpus=ray_cfg.num_cpus, needed_cpus=placement.required().get("CPU", 1.0),
                   dashboard=ray_cfg.dashboard, dashboard_host=ray_cfg.dashboard_host, namespace=ray_cfg.namespace,
                   connect_timeout_s=ray_cfg.connect_timeout_s)
