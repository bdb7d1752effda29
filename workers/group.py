"""A WorkerGroup: the N Ray actors of one role, addressed together.

Thin by design (docs/design.md §3): no method binding by reflection, no generated classes. The controller names
the method it calls as an ordinary Python method of a role's group (these shared ones, the rest in
`role_groups.py`). Underneath, the one place that names a worker method as a string: `_call` blocks and
returns every rank's result, `_call_async` returns the Ray refs so that independent calls on different
groups run at the same time, and `_scatter_async` cuts a batch by rank.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import ray

from r1ray.protocol import split_batch
from r1ray.workers.placement import WorkerSlot

logger = logging.getLogger(__name__)

# Closing engines, pools and process groups takes a few seconds; a rank past this is stuck in a call.
SHUTDOWN_TIMEOUT_S = 15.0


class WorkerStartupError(RuntimeError):
    """A role's workers did not come up in time; the message names the role and the missing ranks."""


class WorkerGroup:
    def __init__(self, role: str, worker_cls: type, slots: Sequence[WorkerSlot], *, startup_timeout_s: float,
                 collective_timeout_s: float, distributed: bool, init_kwargs: dict[str, Any] | None = None,
                 per_rank_kwargs: Sequence[dict[str, Any]] | None = None, env_vars: dict[str, str] | None = None,
                 wait: bool = True):
        """Starts the workers; with `wait=False` returns before they are up, and `start_groups` (given this
        group with others) waits for all of them at once."""
        self.role = role
        self.slots = list(slots)
        self.startup_timeout_s = startup_timeout_s          # workers up, process group joined
        self.collective_timeout_s = collective_timeout_s    # every collective of the role's process group
        self.distributed = distributed
        per_rank = list(per_rank_kwargs) if per_rank_kwargs is not None else [{} for _ in self.slots]
        self.workers = self._build_workers(worker_cls, init_kwargs or {}, per_rank, env_vars or {})
        self.starting: list[ray.ObjectRef] | None = [w.ping.remote() for w in self.workers]   # None once up
        if wait:
            start_groups([self])

    @property
    def world_size(self) -> int:
        return len(self.workers)

    def _build_workers(self, worker_cls: type, init_kwargs: dict[str, Any], per_rank: list[dict[str, Any]],
                       env_vars: dict[str, str]) -> list:
        remote_cls = ray.remote(worker_cls)
        workers = []
        for slot, own_kwargs in zip(self.slots, per_rank):
            threads = str(slot.threads)
            env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
                   **env_vars}
            options = {**slot.options(), "name": None, "runtime_env": {"env_vars": env}}
            workers.append(remote_cls.options(**options).remote(
                role=self.role, rank=slot.rank, world_size=len(self.slots), **init_kwargs, **own_kwargs))
        return workers

    def ping(self) -> list[str]:
        return self._call("ping")

    def setup(self) -> None:
        """Every rank builds its engine (or process pool), after the rendezvous."""
        self._call("setup")

    def setup_async(self) -> list[ray.ObjectRef]:
        return self._call_async("setup")

    def address(self) -> tuple[str, int]:
        """Rank 0's host and a free port there, to host a rendezvous (the weight-sync group's)."""
        return ray.get(self._call_rank0_async("address"))

    def addresses(self) -> list[tuple[str, int]]:
        """Every rank's host and a free port there (a colocated "ipc" pair per rank)."""
        return self._call("address")

    def lifecycle(self) -> list[list[str]]:
        """Per rank, the colocation calls it received, oldest first (`Worker.lifecycle`)."""
        return self._call("lifecycle")

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Every rank closes what it holds (process groups, engines, subprocess pools); `kill` ends them.
        A rank still busy after `timeout_s` (a collective waiting for a peer that died) is left to `kill`:
        a restart must not wait out trainer.collective_timeout_s first."""
        refs = self._call_async("shutdown")
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if pending:
            busy = [i for i, r in enumerate(refs) if r in pending]
            logger.warning("role '%s': ranks %s did not close within %gs (busy in a call); killing them",
                           self.role, busy, timeout_s)
        ray.get(done)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Run `method` on every rank with the same arguments; wait and return all results."""
        return ray.get(self._call_async(method, *args, **kwargs))

    def _call_async(self, method: str, *args: Any, **kwargs: Any) -> list[ray.ObjectRef]:
        return [getattr(w, method).remote(*args, **kwargs) for w in self.workers]

    def _call_rank0_async(self, method: str, *args: Any, **kwargs: Any) -> ray.ObjectRef:
        return getattr(self.workers[0], method).remote(*args, **kwargs)

    def _scatter_async(self, method: str, batch: Any, *, even: bool = True, **kwargs: Any) -> list[ray.ObjectRef]:
        """Split `batch` into world_size contiguous parts and send part i to rank i (see `split_batch`)."""
        parts = split_batch(batch, self.world_size, even=even)
        return [getattr(w, method).remote(part, **kwargs) for w, part in zip(self.workers, parts)]

    def kill(self) -> None:
        for w in self.workers:
            ray.kill(w, no_restart=True)


def setup_groups(groups: Sequence[WorkerGroup], timeout_s: float) -> None:
    """Every rank of every group builds its engine, all at once, within one deadline: an engine whose
    placement cannot be met (vLLM's TP workers asking Ray for more GPU than a bundle has left) or a model
    that never finishes loading fails with one line naming the roles and ranks still building, instead of
    waiting forever. A rank that raises fails at once with its own error."""
    owner = {ref: (g.role, rank) for g in groups for rank, ref in enumerate(g.setup_async())}
    pending, deadline = list(owner), time.monotonic() + timeout_s
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            late = sorted(owner[r] for r in pending)
            raise WorkerStartupError(
                f"{', '.join(f'role {role!r} rank {rank}' for role, rank in late)} did not finish setup within "
                f"{timeout_s:g}s (trainer.startup_timeout_s): a placement its engine cannot get (free GPU share, "
                f"bundles) or a model load that hangs; see the worker logs under /tmp/ray")
        ray.get(done)


def start_groups(groups: Sequence[WorkerGroup]) -> None:
    """Wait until every worker of `groups` is up (its constructor ran: imports, device, threads) and each
    distributed group has joined its torch.distributed world, within each group's `startup_timeout_s`.

    The groups start at the same time: a worker's start is mostly importing torch and the engine's
    libraries, and one group waiting for the previous one left cores idle (on 2 cores, the actor's two
    ranks took 6.4 s and the rollout worker 5.3 s more after them; on GPU nodes the roles' processes start
    on different devices). A group that does not come up in time stops every group given here.
    """
    starting = [g for g in groups if g.starting is not None]
    _wait_all(starting, "ping", {g: g.starting for g in starting})
    distributed = [g for g in starting if g.distributed]
    hosts = _wait_all(starting, "address", {g: [g.workers[0].address.remote()] for g in distributed})
    _wait_all(starting, "init_distributed", {
        g: [w.init_distributed.remote(*hosts[g][0], g.collective_timeout_s) for w in g.workers] for g in distributed})
    for g in starting:
        g.starting = None


def _wait_all(groups: Sequence[WorkerGroup], what: str, refs: dict[WorkerGroup, list]) -> dict[WorkerGroup, list]:
    """Every group's `what` calls done within its startup deadline, else every group in `groups` is killed and
    one line names the late roles and ranks."""
    start = time.monotonic()
    late = []
    for group, group_refs in refs.items():
        left = max(0.0, group.startup_timeout_s - (time.monotonic() - start))
        _, pending = ray.wait(group_refs, num_returns=len(group_refs), timeout=left)
        if pending:
            missing = [i for i, r in enumerate(group_refs) if r in pending]
            late.append(f"role '{group.role}': ranks {missing} did not finish {what} within {group.startup_timeout_s:g}s")
    if late:
        for group in groups:
            group.kill()
        raise WorkerStartupError(f"{'; '.join(late)} (check the cluster has free resources for these roles and the "
                                 f"worker logs under /tmp/ray)")
    return {group: ray.get(group_refs) for group, group_refs in refs.items()}
