"""Placement as data: resource pools (nodes x devices) and a mapping role -> pool (docs/design.md §5).

Roles mapped to the same pool are colocated: each bundle of the pool hosts one worker of every such
role, each asking for an equal fraction of the bundle, so Ray packs them together. Roles on different
pools get their own bundles. The whole plan is checked against the cluster's resources before any
actor starts, and the rank -> node/bundle table is logged once the placement groups are ready.

Python API example (actor and reference share 8 GPUs, 4 rollout engines on another node, reward on CPUs):

    Placement(
        pools={"train": ResourcePool(nodes=1, devices_per_node=8, device="gpu"),
               "gen": ResourcePool(nodes=1, devices_per_node=4, device="gpu"),
               "cpu": ResourcePool(nodes=1, devices_per_node=4, device="cpu")},
        roles={"actor": "train", "ref": "train", "rollout": "gen", "reward": "cpu"},
    )
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import ray
from ray.util.placement_group import PlacementGroup, placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

logger = logging.getLogger(__name__)

ROLES = ("actor", "ref", "rollout", "reward")


class PlacementError(ValueError):
    """The placement cannot be satisfied; the message says which resource is short and by how much (a
    user error: the CLI prints it as one line)."""


@dataclass(frozen=True)
class ResourcePool:
    nodes: int = 1                 # placement groups, one per node (STRICT_PACK keeps a node's bundles together)
    devices_per_node: int = 1      # bundles per node: GPUs, or CPU slots for a CPU pool
    device: str = "cpu"            # "cpu" | "gpu"
    cpus_per_bundle: float = 1.0   # CPUs reserved per bundle (beside the GPU for a GPU pool)

    @property
    def size(self) -> int:
        return self.nodes * self.devices_per_node

    def bundle(self) -> dict[str, float]:
        if self.device == "gpu":
            return {"GPU": 1.0, "CPU": self.cpus_per_bundle}
        return {"CPU": self.cpus_per_bundle}


@dataclass(frozen=True)
class WorkerSlot:
    """Where one worker of a role runs: a bundle of a placement group and its share of that bundle."""

    role: str
    rank: int
    pool: str
    node_index: int
    bundle_index: int
    placement_group: Any = field(repr=False)
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    threads: int = 1               # torch/OpenMP threads of the worker (`Placement.threads_for`)
    ray_node: str = ""             # the Ray node id its bundle was placed on ("" where not known)

    def options(self) -> dict[str, Any]:
        """Ray actor options that pin the worker to its bundle."""
        strategy = PlacementGroupSchedulingStrategy(
            placement_group=self.placement_group, placement_group_bundle_index=self.bundle_index,
            placement_group_capture_child_tasks=False)
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "scheduling_strategy": strategy}


@dataclass(frozen=True)
class Placement:
    pools: Mapping[str, ResourcePool]
    roles: Mapping[str, str]       # role -> pool name
    threads_per_worker: int = 0    # 0: `threads_for` decides

    @classmethod
    def from_config(cls, placement_cfg: Any) -> "Placement":
        pools = {name: ResourcePool(p.nodes, p.devices_per_node, p.device, p.cpus_per_bundle)
                 for name, p in placement_cfg.pools.items()}
        return cls(pools=pools, roles={role: getattr(placement_cfg, role) for role in ROLES},
                   threads_per_worker=placement_cfg.threads_per_worker)

    def only(self, roles: list[str]) -> "Placement":
        """The same pools with just these roles (e.g. SFT needs only the actor)."""
        return Placement(pools=self.pools, roles={r: p for r, p in self.roles.items() if r in roles},
                         threads_per_worker=self.threads_per_worker)

    def threads_for(self, pool: ResourcePool, single_node_cpus: float | None) -> int:
        """Torch threads of each worker on `pool`.

        The phases of a synchronous step run one after another (generate, then score and reference,
        then update), so the phase that runs may use every core it can reach: on a one-node cluster,
        the node's CPUs split among the pool's workers on it; on a multi-node cluster, a whole bundle's
        CPUs (colocated roles take turns on it, so each may use all of it, not its fractional share).
        The worker caps this at the cores its process may run on (`Worker.__init__`).
        """
        if self.threads_per_worker > 0:
            return self.threads_per_worker
        if single_node_cpus is not None:
            return max(1, int(single_node_cpus // pool.devices_per_node))
        return max(1, int(pool.cpus_per_bundle))

    def sharing(self, pool: str) -> list[str]:
        """Roles colocated on `pool`, in ROLES order."""
        return [role for role in ROLES if self.roles.get(role) == pool]

    def required(self) -> dict[str, float]:
        """Total resources of all pools in use."""
        total: dict[str, float] = {}
        for name in set(self.roles.values()):
            pool = self.pools[name]
            for key, amount in pool.bundle().items():
                total[key] = total.get(key, 0.0) + amount * pool.size
        return total

    def validate(self, cluster: Mapping[str, float], nodes: list[Mapping[str, float]] | None = None) -> None:
        """Raise PlacementError naming every shortfall, before any actor starts."""
        for role, pool in self.roles.items():
            if pool not in self.pools:
                raise PlacementError(f"role '{role}' maps to undefined pool '{pool}' (pools: {', '.join(self.pools)})")
        problems = []
        for key, need in sorted(self.required().items()):
            have = float(cluster.get(key, 0.0))
            if need > have + 1e-9:
                problems.append(f"{key}: placement needs {need:g}, cluster has {have:g} (short by {need - have:g})")
        if nodes is not None:
            problems += self._node_problems(nodes)
        if problems:
            where = f"; the cluster's nodes: {describe_nodes(nodes)}" if nodes is not None else ""
            raise PlacementError("placement does not fit the cluster: " + "; ".join(problems) + where)

    def _node_problems(self, nodes: list[Mapping[str, float]]) -> list[str]:
        problems = []
        for name in sorted(set(self.roles.values())):
            pool = self.pools[name]
            per_node = {k: v * pool.devices_per_node for k, v in pool.bundle().items()}
            fitting = sum(all(n.get(k, 0.0) + 1e-9 >= v for k, v in per_node.items()) for n in nodes)
            if fitting < pool.nodes:
                problems.append(f"pool '{name}' needs {pool.nodes} node(s) with {show(per_node)} each, "
                                f"only {fitting} node(s) have that much")
        return problems

    def create(self, timeout_s: float) -> dict[str, list[WorkerSlot]]:
        """Reserve the placement groups and return the worker slots of every role."""
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        self.validate(ray.cluster_resources(), nodes)
        single_node_cpus = float(nodes[0].get("CPU", 1.0)) if len(nodes) == 1 else None
        slots: dict[str, list[WorkerSlot]] = {role: [] for role in self.roles}
        reserved: list[PlacementGroup] = []
        try:
            for name in sorted(set(self.roles.values())):
                pool = self.pools[name]
                groups = [placement_group([pool.bundle()] * pool.devices_per_node, strategy="STRICT_PACK",
                                          name=f"r1ray-{name}-{i}") for i in range(pool.nodes)]
                reserved += groups
                ready, _ = ray.wait([g.ready() for g in groups], num_returns=len(groups), timeout=timeout_s)
                if len(ready) < len(groups):
                    alive = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
                    raise PlacementError(f"pool '{name}': only {len(ready)} of {len(groups)} placement groups became "
                                         f"ready within {timeout_s:g}s; it needs {show(pool.bundle())} x "
                                         f"{pool.devices_per_node} on each of {pool.nodes} node(s), beside the other "
                                         f"pools, and the cluster's nodes are now: {describe_nodes(alive)}")
                self._fill_slots(name, pool, groups, slots, self.threads_for(pool, single_node_cpus))
        except BaseException:
            # Nothing stays reserved after a failure: a pending group would take its resources as soon as
            # they free up, and a retry (a restart) creates the groups again under the same names.
            for group in reserved:
                ray.util.remove_placement_group(group)
            raise
        log_rank_table(slots)
        return slots

    def _fill_slots(self, name: str, pool: ResourcePool, groups: list[PlacementGroup],
                    slots: dict[str, list[WorkerSlot]], threads: int) -> None:
        roles = self.sharing(name)
        share = 1.0 / len(roles)
        placed = [bundle_nodes(group) for group in groups]        # one GCS query per placement group
        for role in roles:
            for node_index, group in enumerate(groups):
                for bundle_index in range(pool.devices_per_node):
                    slots[role].append(WorkerSlot(
                        role=role, rank=len(slots[role]), pool=name, node_index=node_index,
                        bundle_index=bundle_index, placement_group=group,
                        num_cpus=pool.cpus_per_bundle * share,
                        num_gpus=share if pool.device == "gpu" else 0.0, threads=threads,
                        ray_node=placed[node_index].get(bundle_index, "")))


def show(resources: Mapping[str, float]) -> str:
    """'{CPU: 4, GPU: 1}': the CPUs and GPUs of a node or a request."""
    return "{" + ", ".join(f"{k}: {resources[k]:g}" for k in ("CPU", "GPU") if resources.get(k)) + "}"


def describe_nodes(nodes: list[Mapping[str, float]]) -> str:
    """'3 x {CPU: 1}, 1 x {CPU: 4, GPU: 1}': the alive nodes' CPUs and GPUs, grouped."""
    counts: dict[str, int] = {}
    for shown in map(show, nodes):
        counts[shown] = counts.get(shown, 0) + 1
    return ", ".join(f"{n} x {res}" for res, n in counts.items()) or "none"


def bundle_nodes(group: PlacementGroup) -> dict[int, str]:
    """Bundle index -> the Ray node id it was placed on, for a ready placement group."""
    table = ray.util.placement_group_table(group)
    return {int(i): str(node) for i, node in table.get("bundles_to_node_id", {}).items()}


def log_rank_table(slots: Mapping[str, list[WorkerSlot]]) -> None:
    """`node` is the pool's placement-group index; `ray node` the first 12 hex digits of the Ray node id
    its bundle landed on, so a multi-node placement shows which ranks share a machine."""
    lines = ["role     rank  pool        node  bundle  cpus   gpus  threads  ray node"]
    for role, role_slots in slots.items():
        for s in role_slots:
            lines.append(f"{role:<8} {s.rank:>4}  {s.pool:<10} {s.node_index:>5} {s.bundle_index:>7}  "
                         f"{s.num_cpus:<5.2f}  {s.num_gpus:.2f}  {s.threads:>7}  {s.ray_node[:12]}")
    logger.info("worker placement:\n%s", "\n".join(lines))
