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
    if dashboard and dashboard_host not in LOOPBACK and not os.environ.get("RAY_AUTH_MODE"):
        logger.warning("the Ray dashboard will listen on %s without token authentication: anyone who reaches "
                       "it can run code on this machine (set RAY_AUTH_MODE=token or bind to 127.0.0.1)",
                       dashboard_host)
    cpus = num_cpus or max(os.cpu_count() or 1, math.ceil(needed_cpus))
    # address="local" starts our own cluster even when a `ray start` head runs on this machine
    # (plain ray.init() would attach to it and ignore num_cpus).
    ray.init(address="local", num_cpus=cpus, namespace=namespace, include_dashboard=dashboard, dashboard_host=dashboard_host,
             _node_ip_address="127.0.0.1", log_to_driver=True,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "R1RAY_LOOPBACK": "1"}})
    return f"local cluster on 127.0.0.1 with {cpus} CPUs"
