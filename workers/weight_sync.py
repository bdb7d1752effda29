"""Weight sync from the actor to the rollout engines over a dedicated process group.

    actor ranks (FSDP shards)                weight-sync group: world = 1 + E
    +----+ +----+ +----+ +----+
    | a0 | | a1 | | a2 | | a3 |   full_tensor() all-gathers each weight over the actor's own group,
    +----+ +----+ +----+ +----+   so every actor rank iterates; only a0 is in the sync group
       |
       |  sync rank 0: packs weights into buckets (manifest order, rollout dtype) and broadcasts them
       v
    +----+ +----+     +----+
    | r0 | | r1| ... | rE-1|   sync ranks 1..E: rollout engines unpack each bucket and load it by name
    +----+ +----+     +----+

The group is a standalone c10d process group (gloo on CPU, NCCL on GPU) built from its own TCPStore,
so it neither disturbs nor depends on each role's default torch.distributed world. Both sides derive
the same bucket plan from the manifest, so no per-bucket metadata travels. Every collective has a
timeout; a failure names the sync rank. After each sync both sides hash a sample of the tensors and the
controller compares the hashes (`verify_checksums`), failing the step loudly on any mismatch.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

logger = logging.getLogger(__name__)

Manifest = list[tuple[str, tuple[int, ...], str]]   # (name, shape, dtype name) in send order
DTYPES = {"torch.float32": torch.float32, "torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16}


class WeightSyncError(RuntimeError):
    """A sync collective failed or the synced weights differ from the actor's."""


@dataclass(frozen=True)
class SyncGroupSpec:
    master_addr: str
    master_port: int
    world_size: int               # 1 sender + number of rollout engines
    backend: str                  # "gloo" | "nccl"
    timeout_s: float
    bucket_bytes: int = 64 << 20


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
        self.device = device
        timeout = timedelta(seconds=spec.timeout_s)
        try:
            store = dist.TCPStore(spec.master_addr, spec.master_port, spec.world_size, rank == 0, timeout=timeout)
            prefixed = dist.PrefixStore("r1ray-weight-sync", store)
            self.pg = _make_process_group(spec.backend, prefixed, rank, spec.world_size, timeout)
        except Exception as exc:
            raise WeightSyncError(f"weight-sync rank {rank}/{spec.world_size}: could not join the group at "
                                  f"{spec.master_addr}:{spec.master_port}: {exc}") from exc
        self._store = store

    def broadcast(self, tensor: Tensor) -> None:
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        try:
            self.pg.broadcast([tensor], opts).wait(timedelta(seconds=self.spec.timeout_s))
        except Exception as exc:
            raise WeightSyncError(f"weight-sync rank {self.rank}: broadcast failed or timed out after "
                                  f"{self.spec.timeout_s:g}s: {exc}") from exc

    def send(self, manifest: Manifest, weights: Iterable[tuple[str, Tensor]]) -> str:
        """Sender side (rank 0). `weights` yields (name, full tensor) in manifest order; returns the checksum."""
        hasher = Checksum(len(manifest))
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
                hasher.add(i, name, tensor)
                parts.append(tensor.reshape(-1))
            self.broadcast(torch.cat(parts) if len(parts) > 1 else parts[0])
        return hasher.hexdigest()

    def receive(self, manifest: Manifest) -> Iterator[tuple[str, Tensor]]:
        """Receiver side: yields (name, tensor) per weight as buckets arrive (views into the bucket)."""
        for bucket in bucket_plan(manifest, self.spec.bucket_bytes):
            dtype = DTYPES[manifest[bucket[0]][2]]
            numels = [_numel(manifest[i][1]) for i in bucket]
            flat = torch.empty(sum(numels), dtype=dtype, device=self.device)
            self.broadcast(flat)
            for i, piece in zip(bucket, torch.split(flat, numels)):
                name, shape, _ = manifest[i]
                yield name, piece.view(tuple(shape))

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


class Checksum:
    """Hash of a deterministic sample of tensors: about 8 evenly spaced ones, first and last included.

    Cheap enough for every step, and it covers layers at both ends of the model, where a mis-ordered or
    truncated transfer shows first. `verify_checksums` compares sender and receivers.
    """

    def __init__(self, count: int, samples: int = 8):
        step = max(1, count // samples)
        self.picked = set(range(0, count, step)) | {count - 1}
        self.h = hashlib.blake2b(digest_size=16)

    def add(self, index: int, name: str, tensor: Tensor) -> None:
        if index in self.picked:
            data = tensor.detach().to("cpu").contiguous()
            raw = data.view(torch.int16) if data.dtype in (torch.bfloat16, torch.float16) else data
            self.h.update(name.encode())
            self.h.update(raw.numpy().tobytes())

    def wrap(self, stream: Iterable[tuple[str, Tensor]]) -> Iterator[tuple[str, Tensor]]:
        """Pass (name, tensor) pairs through, hashing the sampled ones on the way."""
        for index, (name, tensor) in enumerate(stream):
            self.add(index, name, tensor)
            yield name, tensor

    def hexdigest(self) -> str:
        return self.h.hexdigest()


def checksum_of(manifest: Manifest, weights: dict[str, Tensor]) -> str:
    """The receiver's checksum, computed from the weights it actually holds after loading."""
    hasher = Checksum(len(manifest))
    for i, (name, _, dt) in enumerate(manifest):
        if i in hasher.picked:
            hasher.add(i, name, weights[name].to(DTYPES[dt]))
    return hasher.hexdigest()


def verify_checksums(sender: str, receivers: Sequence[str]) -> None:
    """Raise WeightSyncError naming every rollout engine whose weights differ from the actor's."""
    bad = [i for i, r in enumerate(receivers) if r != sender]
    if bad:
        raise WeightSyncError(f"weight sync verification failed: rollout engine(s) {bad} hold weights that differ "
                              f"from the actor's (checksum {sender[:12]} vs {[receivers[i][:12] for i in bad]})")
