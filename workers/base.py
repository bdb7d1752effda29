"""What every r1ray Ray actor shares (`Worker`: rank bookkeeping, lifecycle, a rendezvous address), and what
the workers that compute with torch add (`TorchWorker`: a device, capped threads, the torch.distributed world).

Only `TorchWorker` imports torch: a reward worker, whose scoring runs in subprocesses of its own, starts
without it (about 2 s of CPU and 200 MB of resident memory less per reward worker).
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port that is free on this node right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def node_ip() -> str:
    """This node's address for rendezvous; loopback on the embedded single-machine cluster, so that no
    r1ray traffic leaves the machine (the controller sets R1RAY_LOOPBACK there)."""
    if os.environ.get("R1RAY_LOOPBACK") == "1":
        return "127.0.0.1"
    import ray

    return ray.util.get_node_ip_address()


def default_group_backend(device: torch.device) -> str:
    """The default process group's backend for workers on `device`.

    On GPU, collectives on CPU tensors (the micro-batch count, the loss denominator) must still work:
    a pure "nccl" group rejects them, so CPU tensors go over gloo and CUDA tensors over NCCL.
    """
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def pick_device() -> torch.device:
    """The GPU Ray assigned to this actor, or the CPU (an actor that reserved no GPU gets none from Ray)."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    import ray

    assigned = ray.get_gpu_ids() if ray.is_initialized() else []
    if not assigned:
        return torch.device("cpu")
    return torch.device("cuda", gpu_index(assigned, os.environ.get("CUDA_VISIBLE_DEVICES")))


def gpu_index(assigned: list, visible: str | None) -> int:
    """The torch index of the first GPU Ray assigned (`ray.get_gpu_ids()`, physical ids) given this process's
    CUDA_VISIBLE_DEVICES. Ray normally sets that to the assigned ids, making the index 0; with
    RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES (vLLM's TP workers set it) every GPU stays visible and
    index 0 would put every worker on GPU 0."""
    first = str(assigned[0])
    if not visible:
        return int(first)
    ids = [v.strip() for v in visible.split(",")]
    return ids.index(first) if first in ids else 0


def cap_threads() -> None:
    """Torch threads = OMP_NUM_THREADS (set from the placement), at most the cores this process may run
    on: a one-node Ray cluster may declare more CPUs than the machine has, and more threads than cores
    only adds contention."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    wanted = int(os.environ.get("OMP_NUM_THREADS", "0") or 0) or torch.get_num_threads()
    torch.set_num_threads(max(1, min(wanted, cores)))


LIFECYCLE_KEEP = 256     # most recent lifecycle events a worker keeps


class Worker:
    """Base of all role workers. Subclasses build their engines in `setup`, after the rendezvous."""

    def __init__(self, role: str, rank: int, world_size: int):
        self.role = role
        self.rank = rank
        self.world_size = world_size
        self.events: list[str] = []

    def _record(self, event: str) -> None:
        self.events = (self.events + [event])[-LIFECYCLE_KEEP:]

    def lifecycle(self) -> list[str]:
        """The most recent colocation-cycle calls this worker received (setup, sleep/wake, onload/offload,
        ...), oldest first; the controller's order of them is checked against this."""
        return list(self.events)

    def ping(self) -> str:
        return f"{self.role}:{self.rank}"

    def pid(self) -> int:
        """This worker's process id, for an operator (or a test) to profile or kill it."""
        return os.getpid()

    def address(self) -> tuple[str, int]:
        """Host and a free port, asked of rank 0 to host the group's rendezvous."""
        return node_ip(), free_port()

    def shutdown(self) -> None:
        """Release what the worker holds before its process ends; subclasses add their engines."""


class TorchWorker(Worker):
    """A worker that computes with torch: the GPU Ray assigned (or the CPU), torch threads capped at the
    cores the process may use, and the role's torch.distributed world."""

    def __init__(self, role: str, rank: int, world_size: int):
        super().__init__(role, rank, world_size)
        self.device = pick_device()
        cap_threads()

    def init_distributed(self, master_addr: str, master_port: int, timeout_s: float) -> None:
        """Join this role's torch.distributed world (see `default_group_backend`).

        `timeout_s` is the collective timeout of the group (`trainer.collective_timeout_s`): how long a
        rank waits in any later collective for the others, not how long the workers may take to start.
        """
        import torch
        import torch.distributed as dist

        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        backend = default_group_backend(self.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        dist.init_process_group(backend=backend, rank=self.rank, world_size=self.world_size,
                                timeout=timedelta(seconds=timeout_s))
        logger.info("%s rank %d/%d joined %s group at %s:%d", self.role, self.rank, self.world_size,
                    backend, master_addr, master_port)

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        super().shutdown()
