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

Transports (`SyncGroupSpec.backend`), chosen by placement (`controller/roles.py:sync_backend`):
- "nccl": actor and engines on GPUs of their own; a standalone c10d group built from its own TCPStore, so it
  neither disturbs nor depends on each role's default torch.distributed world.
- "gloo": the same on CPU.
- "ipc": actor and engines colocated (NCCL refuses two ranks on one GPU). Every actor rank already holds the
  full tensors (`full_tensor()` gathers on all ranks), so each rank sends to the engine worker on its own
  bundle, a group of two: a bucket is shared, not copied, through CUDA IPC on a GPU or shared memory on a
  CPU, and its handle travels through the group's TCPStore; the receiver copies it and acknowledges.

Both sides derive the same bucket plan from the manifest, so no per-bucket metadata travels. Every
exchange has a deadline and a failure names the sync rank. Every tensor is fingerprinted where it lives
(`fingerprint.py`) on both sides, and the controller compares the tables (failing the step loudly on any
difference).
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import asdict, dataclass
from multiprocessing.reduction import ForkingPickler
from datetime import timedelta
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from r1ray.models.loading import DTYPES
from r1ray.workers.fingerprint import Fingerprints, WeightSyncError

logger = logging.getLogger(__name__)

# (name, full shape, dtype name as in model.dtype: "float32", "bfloat16", ...) of every tensor, in send order;
# the actor's engine lists it (`TrainEngine.parameter_manifest`), both sides derive the buckets from it.
Manifest = list[tuple[str, tuple[int, ...], str]]

__all__ = ["Manifest", "SyncGroup", "SyncGroupSpec", "WeightSyncError", "bucket_plan"]


@dataclass(frozen=True)
class SyncGroupSpec:
    master_addr: str
    master_port: int
    world_size: int               # 1 sender + its receiving processes (engines x TP size; 2 for "ipc")
    backend: str                  # "gloo" | "nccl" | "ipc"
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
    """One member of a weight-sync group."""

    def __init__(self, spec: SyncGroupSpec, rank: int, device: torch.device):
        self.spec = spec
        self.rank = rank
        # gloo moves host tensors only; NCCL and IPC move the tensors where they live.
        self.device = torch.device("cpu") if spec.backend == "gloo" else device
        self.pg = None
        self.exchanged = 0                 # buckets exchanged so far: "ipc" keys are unique per bucket
        timeout = timedelta(seconds=spec.timeout_s)
        try:
            store = dist.TCPStore(spec.master_addr, spec.master_port, spec.world_size, rank == 0, timeout=timeout)
            self.store = dist.PrefixStore("r1ray-weight-sync", store)
            if spec.backend == "ipc":
                # Host buckets are shared by file name, which a process that is not our child can open.
                torch.multiprocessing.set_sharing_strategy("file_system")
            else:
                self.pg = _make_process_group(spec.backend, self.store, rank, spec.world_size, timeout)
        except Exception as exc:
            raise WeightSyncError(f"weight-sync rank {rank}/{spec.world_size}: could not join the group at "
                                  f"{spec.master_addr}:{spec.master_port} within {spec.timeout_s:g}s: {exc}") from exc
        self._store = store

    def _bucket(self, flat: Tensor | None) -> Tensor:
        """Rank 0 passes its bucket, receivers an empty one of the same size (None with "ipc", where the
        copy is made from the shared bucket); all return the sent data."""
        if self.pg is None:
            return self._share(flat)
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        try:
            self.pg.broadcast([flat], opts).wait(timedelta(seconds=self.spec.timeout_s))
        except Exception as exc:
            raise WeightSyncError(f"weight-sync rank {self.rank}: broadcast failed or timed out after "
                                  f"{self.spec.timeout_s:g}s: {exc}") from exc
        return flat

    def _share(self, flat: Tensor | None) -> Tensor:
        """"ipc": the sender publishes the bucket's handle and waits for every receiver's copy."""
        key = f"bucket/{self.exchanged}"
        self.exchanged += 1
        try:
            if self.rank != 0:
                received = _open_bucket(self.store.get(key), self.device).clone()
                self.store.add(key + "/acks", 1)
                return received
            self.store.set(key, _publish_bucket(flat))
            deadline = time.monotonic() + self.spec.timeout_s
            while self.store.add(key + "/acks", 0) < self.spec.world_size - 1:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no copy acknowledged within {self.spec.timeout_s:g}s")
                time.sleep(0.001)
            self.store.delete_key(key)
            self.store.delete_key(key + "/acks")
            return flat
        except Exception as exc:
            raise WeightSyncError(f"weight-sync rank {self.rank}: IPC bucket {key} failed: {exc}") from exc

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
            flat = torch.cat(parts) if len(parts) > 1 else parts[0]
            if self.pg is None and len(parts) == 1:
                flat = flat.clone()      # an IPC bucket must own its storage, not share a weight's
            self._bucket(flat)
        return prints.tolist()

    def receive(self, manifest: Manifest, prints: Fingerprints | None = None) -> Iterator[tuple[str, Tensor]]:
        """Receiver side: yields (name, tensor) per weight as buckets arrive (views into the bucket),
        fingerprinting each into `prints` when given."""
        for bucket in bucket_plan(manifest, self.spec.bucket_bytes):
            dtype = DTYPES[manifest[bucket[0]][2]]
            numels = [_numel(manifest[i][1]) for i in bucket]
            empty = torch.empty(sum(numels), dtype=dtype, device=self.device) if self.pg is not None else None
            flat = self._bucket(empty)
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


def _publish_bucket(flat: Tensor) -> bytes:
    """An "ipc" bucket as bytes for the store: host memory by file name, or a CUDA tensor's IPC handle with
    the UUID of the GPU it lives on (the receiver may number that GPU differently: a vLLM TP worker sees
    every GPU of its engine, the actor only its own)."""
    if flat.device.type == "cpu":
        flat.share_memory_()
        return pickle.dumps(("host", bytes(ForkingPickler.dumps(flat))))
    from torch.multiprocessing.reductions import reduce_tensor

    _, args = reduce_tensor(flat)
    return pickle.dumps(("cuda", device_uuid(flat.device), args))


def _open_bucket(payload: bytes, device: torch.device) -> Tensor:
    """Inverse of `_publish_bucket` in the receiving process; a CUDA handle is opened on this process's own
    index of the sender's GPU, and a pair on two GPUs is refused (a handle opens only where it was made)."""
    kind, *rest = pickle.loads(payload)
    if kind == "host":
        return pickle.loads(rest[0]).to(device)
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    uuid, args = rest
    index = device.index if device.index is not None else torch.cuda.current_device()
    mine = device_uuid(torch.device("cuda", index))
    if uuid != mine:
        raise WeightSyncError(f"colocated weight sync between two GPUs: the bucket is on GPU {uuid}, this "
                              f"receiver on GPU {mine} (cuda:{index}); an \"ipc\" pair must share its GPU")
    args = list(args)
    args[6] = index                 # reduce_tensor's device index is the sender's numbering of the GPU
    return rebuild_cuda_tensor(*args)


def device_uuid(device: torch.device) -> str:
    """The UUID of the GPU `device` names, whatever index this process gives it; "" off CUDA."""
    if device.type != "cuda":
        return ""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return str(torch.cuda.get_device_properties(index).uuid)


def _make_process_group(backend: str, store: dist.Store, rank: int, world: int, timeout: timedelta):
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world, opts)
    return dist.ProcessGroupGloo(store, rank, world, timeout)
