"""Weight sync from the actor to the rollout engines over a dedicated process group.

    actor ranks (FSDP shards)                weight-sync group: world = 1 + sum of engines' TP sizes
    +----+ +----+ +----+ +----+
    | a0 | | a1 | | a2 | | a3 |   full_tensor() all-gathers each weight over the actor's own group,
    +----+ +----+ +----+ +----+   so every actor rank iterates; only a0 is in the sync group
       |
       |  sync rank 0: packs weights into buckets (manifest order, rollout dtype) and broadcasts them
       v
    engine 0 (tp=2)     engine 1 (tp=2)         sync rank of a receiver = 1 + engine index * tp + tp rank
    +----+ +----+       +----+ +----+
    | r1 | | r2 |       | r3 | | r4 |          HF engines: the rollout worker itself receives;
    +----+ +----+       +----+ +----+          vLLM: each of the engine's worker processes receives inside
                                              vLLM, through the "r1ray" weight-transfer backend
                                              (`engines/vllm_transfer.py`), and keeps its TP shard

The group is a standalone c10d process group built from its own TCPStore: NCCL between GPUs, gloo on
CPU and when actor and engines share GPUs (NCCL refuses two ranks on one device; CUDA IPC would avoid the
host round trip and is not built yet).
It neither disturbs nor depends on each role's default torch.distributed world. Both sides derive the
same bucket plan from the manifest, so no per-bucket metadata travels. Every collective has a deadline
and a failure names the sync rank. Every tensor is fingerprinted where it lives (`fingerprint.py`) on
both sides, and the controller compares the tables (failing the step loudly on any difference).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from r1ray.workers.fingerprint import Fingerprints, WeightSyncError

logger = logging.getLogger(__name__)

Manifest = list[tuple[str, tuple[int, ...], str]]   # (name, shape, dtype name) in send order
DTYPES = {"torch.float32": torch.float32, "torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16}

__all__ = ["DTYPES", "Manifest", "SyncGroup", "SyncGroupSpec", "WeightSyncError", "bucket_plan"]


@dataclass(frozen=True)
class SyncGroupSpec:
    master_addr: str
    master_port: int
    world_size: int               # 1 sender + every receiving process (engines x their TP size)
    backend: str                  # "gloo" | "nccl"
    timeout_s: float
    bucket_bytes: int = 64 << 20

    def to_dict(self) -> dict[str, Any]:
        """Primitives only: what may cross into vLLM's engine process (msgpack turns dataclasses into dicts)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SyncGroupSpec":
        return cls(**d)


def bucket_plan(manifest: Manifest, bucket_bytes: int) -> list[list[int]]:
    """Indices of manifest entries per bucket: consecutive, one dtype per bucket, at most bucket_bytes
    (a single larger tensor gets a bucket of its own)."""
    plan: list[list[int]] = []
    size, dtype = 0, None
    for i, (_, shape, dt) in enumerate(manifest):
        nbytes = _numel(shape) * DTYPES[dt].itemsize
        if plan and dt == dtype and size + nbytes <= bucket_bytes:
            plan[-1].append(i)
            size += nbytes
        else:
            plan.append([i])
            size, dtype = nbytes, dt
    return plan


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


class SyncGroup:
    """One member of the weight-sync group."""

    def __init__(self, spec: SyncGroupSpec, rank: int, device: torch.device):
        self.spec = spec
        self.rank = rank
        # gloo moves host tensors only: a GPU member of a gloo group (actor and engine sharing one GPU,
        # where NCCL refuses two ranks) stages each bucket through host memory.
        self.device = device if spec.backend == "nccl" else torch.device("cpu")
        timeout = timedelta(seconds=spec.timeout_s)
        try:
            store = dist.TCPStore(spec.master_addr, spec.master_port, spec.world_size, rank == 0, timeout=timeout)
            prefixed = dist.PrefixStore("r1ray-weight-sync", store)
            self.pg = _make_process_group(spec.backend, prefixed, rank, spec.world_size, timeout)
        except Exception as exc:
            raise WeightSyncError(f"weight-sync rank {rank}/{spec.world_size}: could not join the group at "
                                  f"{spec.master_addr}:{spec.master_port} within {spec.timeout_s:g}s: {exc}") from exc
        self._store = store

    def broadcast(self, tensor: Tensor) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        try:
            self.pg.broadcast([tensor], opts).wait(timedelta(seconds=self.spec.timeout_s))
        except Exception as exc:
            raise WeightSyncError(f"weight-sync rank {self.rank}: broadcast failed or timed out after "
                                  f"{self.spec.timeout_s:g}s: {exc}") from exc

    def send(self, manifest: Manifest, weights: Iterable[tuple[str, Tensor]]) -> list[list[int]]:
        """Sender side (rank 0). `weights` yields (name, full tensor) in manifest order; returns the
        fingerprint of every tensor as sent."""
        prints = Fingerprints(len(manifest), self.device)
        it = iter(weights)
        for bucket in bucket_plan(manifest, self.spec.bucket_bytes):
            parts = []
            for i in bucket:
                name, shape, dt = manifest[i]
                got_name, tensor = next(it)
                if got_name != name or tuple(tensor.shape) != tuple(shape):
                    raise WeightSyncError(f"weight-sync sender: expected {name}{tuple(shape)}, got "
                                          f"{got_name}{tuple(tensor.shape)}; actor and rollout models differ")
                tensor = tensor.to(self.device, DTYPES[dt]).contiguous()
                prints.add(i, tensor)
                parts.append(tensor.reshape(-1))
            self.broadcast(torch.cat(parts) if len(parts) > 1 else parts[0])
        return prints.tolist()

    def receive(self, manifest: Manifest, prints: Fingerprints | None = None) -> Iterator[tuple[str, Tensor]]:
        """Receiver side: yields (name, tensor) per weight as buckets arrive (views into the bucket),
        fingerprinting each into `prints` when given."""
        for bucket in bucket_plan(manifest, self.spec.bucket_bytes):
            dtype = DTYPES[manifest[bucket[0]][2]]
            numels = [_numel(manifest[i][1]) for i in bucket]
            flat = torch.empty(sum(numels), dtype=dtype, device=self.device)
            self.broadcast(flat)
            for i, piece in zip(bucket, torch.split(flat, numels)):
                name, shape, _ = manifest[i]
                tensor = piece.view(tuple(shape))
                if prints is not None:
                    prints.add(i, tensor)
                yield name, tensor

    def close(self) -> None:
        shutdown = getattr(self.pg, "shutdown", None)
        if shutdown is not None:
            shutdown()
        self.pg = None


def _make_process_group(backend: str, store: dist.Store, rank: int, world: int, timeout: timedelta):
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world, opts)
    return dist.ProcessGroupGloo(store, rank, world, timeout)
