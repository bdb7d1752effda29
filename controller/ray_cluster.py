"""Joining the Ray cluster: the one `ray job submit`/RAY_ADDRESS points at, or an embedded local one.

The embedded cluster binds to 127.0.0.1 and starts no dashboard unless asked: Ray's dashboard and job
API execute code, so they must not listen on a public interface by default (DESIGN §9).
"""

from __future__ import annotations

import logging
import math
import os

import ray

logger = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def connect(address: str, *, num_cpus: int, needed_cpus: float, dashboard: bool, dashboard_host: str,
            namespace: str) -> str:
    """Connect to (or start) Ray; returns a short description of what was joined."""
    if ray.is_initialized():
        return "already connected"
    address = address or os.environ.get("RAY_ADDRESS", "")
    if address:
        ray.init(address=address, namespace=namespace, log_to_driver=True)
        return f"cluster at {address}"
    cpus = num_cpus or max(os.cpu_count() or 1, math.ceil(needed_cpus))
    # address="local" starts our own cluster even when a `ray start` head runs on this machine
    # (plain ray.init() would attach to it and ignore num_cpus).
    ray.init(address="local", num_cpus=cpus, namespace=namespace, include_dashboard=dashboard, dashboard_host=dashboard_host,
             _node_ip_address="127.0.0.1", log_to_driver=True,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "R1RAY_LOOPBACK": "1"}})
    # Checked after init: Ray 2.52+ reads RAY_AUTH_MODE, and Ray 2.60 turns token auth on by itself for the
    # clusters ray.init() starts when the variable is unset, so only Ray can say whether it is on.
    warning = dashboard_exposure_warning(dashboard, dashboard_host, token_auth_enabled())
    if warning:
        logger.warning(warning)
    return f"local cluster on 127.0.0.1 with {cpus} CPUs"


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


def connect_for(ray_cfg, placement) -> str:
    """`connect` with the config's `ray` section, sized for `placement` (a workers.placement.Placement)."""
    return connect(ray_cfg.address, num_cpus=ray_cfg.num_cpus, needed_cpus=placement.required().get("CPU", 1.0),
                   dashboard=ray_cfg.dashboard, dashboard_host=ray_cfg.dashboard_host, namespace=ray_cfg.namespace)
