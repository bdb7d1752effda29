"""Storage every checkpoint writer can reach: `trainer.output_dir` checked before any worker starts.

Each actor rank writes its own shard of every checkpoint under `trainer.output_dir`, and a resumed run (or
a restart) reads them all back, as does the driver, which writes the metrics and the COMPLETE marker. On a
cluster of several nodes that only works on storage they all mount (NFS, a Kubernetes volume: see
deploy/kuberay/pvc-shared.yaml). A local path there would split every checkpoint over the nodes' own
disks, found out only when a resume fails. So once the placement groups are ready, the driver writes a
probe file into the output directory and a task on each other node that holds an actor bundle reads it
back; a node that cannot ends the run at start with one line naming the ranks, the node and the fix.
A run whose actor bundles are all on the driver's node checks nothing (and starts no task).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Sequence

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from r1ray.errors import UnsharedStorage

PROBE_PREFIX = ".r1ray-storage-probe-"


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def check_shared_output(out_dir: Path, slots: Sequence) -> None:
    """Every node of these worker slots (the actor's) other than the driver's reads what the driver wrote
    into `out_dir`, or UnsharedStorage."""
    here = ray.get_runtime_context().get_node_id()
    nodes = sorted({s.ray_node for s in slots if s.ray_node and s.ray_node != here})
    if not nodes:
        return
    token = secrets.token_hex(8)
    probe = Path(out_dir).resolve() / f"{PROBE_PREFIX}{token}"
    probe.write_text(token)
    read = ray.remote(num_cpus=0, max_retries=0)(_read)
    try:
        seen = ray.get([read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                        .remote(str(probe)) for node in nodes])
    finally:
        probe.unlink(missing_ok=True)
    blind = [node for node, text in zip(nodes, seen) if text != token]
    if not blind:
        return
    ranks = {node: [str(s.rank) for s in slots if s.ray_node == node] for node in blind}
    where = "; ".join(f"{'rank' if len(r) == 1 else 'ranks'} {', '.join(r)} on ray node {node[:12]}"
                      for node, r in ranks.items())
    raise UnsharedStorage(
        f"trainer.output_dir: {probe.parent} is not on storage the actor's nodes share: a file the driver wrote "
        f"there cannot be read by actor {where}, so each node would keep its own part of every checkpoint and no "
        f"resume could load one; use a path every node mounts (NFS, a shared volume such as "
        f"deploy/kuberay/pvc-shared.yaml)")
