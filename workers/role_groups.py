"""Typed worker groups: each role's group exposes its workers' methods as ordinary Python methods, so a
reader (and an IDE) can follow a call from the controller's `step()` into the worker.

`*_async` methods return Ray refs (to launch independent calls together and gather them later); the
plain names block. Engine layout for tensor parallelism lives here too: a TP engine spans `tp`
consecutive bundles of one node, and its worker sits on the first of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import ray

from r1ray.engines import ROLLOUT_ENGINES
from r1ray.protocol import PromptBatch, RolloutBatch, SamplingParams, TrainBatch, chunk_rows, concat_batches
from r1ray.rewards import RewardItem, RewardSpec, ScoreBatch
from r1ray.workers.actor import ActorWorker
from r1ray.workers.engines import EngineSpec, RolloutSpec
from r1ray.workers.group import WorkerGroup
from r1ray.workers.losses import LossSettings
from r1ray.workers.placement import WorkerSlot
from r1ray.workers.ref import RefWorker
from r1ray.workers.reward import RewardWorker
from r1ray.workers.rollout import RolloutWorker
from r1ray.workers.weight_sync import Manifest, SyncGroupSpec


@dataclass(frozen=True)
class EngineSlot:
    """Where one rollout engine runs: its worker's slot and the bundles its TP workers use."""

    slot: WorkerSlot                 # the worker's slot, rank = engine index
    bundle_indices: tuple[int, ...]  # bundles of the placement group the engine's TP workers take
    sync_rank_offset: int            # weight-sync rank of the engine's first TP worker
    # GPU each of vLLM's TP workers reserves (VLLM_RAY_PER_WORKER_GPUS): the rollout's share of its bundle,
    # which is less than 1 when colocated; 0 where the engine's own worker holds the device (TP 1, CPU).
    tp_worker_gpus: float = 0.0


def engine_slots(slots: Sequence[WorkerSlot], tp: int, on_gpu: bool) -> list[EngineSlot]:
    """Group a rollout pool's slots into engines of `tp` bundles each.

    Engine e takes slots e*tp .. e*tp+tp-1 (same node: a pool's node holds devices_per_node bundles and
    tp divides it), rank e, and weight-sync ranks 1 + e*tp .. 1 + e*tp + tp - 1. With tp > 1 on GPUs the
    worker itself takes no GPU: vLLM's Ray executor starts one process per TP rank on the bundles' GPUs.
    """
    if len(slots) % tp:
        raise ValueError(f"rollout.tensor_parallel_size={tp} must divide the rollout pool's {len(slots)} bundles")
    engines = []
    for e in range(len(slots) // tp):
        group = slots[e * tp:(e + 1) * tp]
        if len({(s.node_index, id(s.placement_group)) for s in group}) != 1:
            raise ValueError(f"rollout engine {e}: its {tp} bundles span nodes; make devices_per_node a multiple "
                             f"of rollout.tensor_parallel_size")
        split = on_gpu and tp > 1
        first = replace(group[0], rank=e, num_gpus=0.0 if split else group[0].num_gpus)
        engines.append(EngineSlot(first, tuple(s.bundle_index for s in group), 1 + e * tp,
                                  tp_worker_gpus=group[0].num_gpus if split else 0.0))
    return engines


def sync_world_size(engines: Sequence[EngineSlot], tp: int) -> int:
    """The actor's sender plus every TP worker of every engine."""
    return 1 + len(engines) * tp


def client_threads(spec: RolloutSpec) -> dict[str, str]:
    """A rollout worker that is only its engine's client (vLLM: `client_threads` in `r1ray.engines`) gets
    that many OpenMP threads, from process start; other engines keep the placement's share.

    vLLM forks its engine-core process from this one, and OpenMP's thread count comes from the
    environment of the process start (torch.set_num_threads changes only the calling thread): with two
    threads on a 2-core machine the engine core's small torch ops waited on threads descheduled by vLLM's
    busy-polling processes, and the quickstart's generation took 3.2 s a step instead of 0.25 s. vLLM's
    compute threads are set from its CPU binding (`vllm_rollout`), not from this. An engine that computes in
    the worker's own process (vLLM on a CPU pool with TP 1) keeps the placement's share: those threads are
    its compute threads.
    """
    entry = ROLLOUT_ENGINES.get(spec.engine)
    if entry.in_worker_process(spec.device, spec.tensor_parallel_size):
        return {}
    threads = entry.client_threads
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {}


class RolloutGroup(WorkerGroup):
    def __init__(self, engines: Sequence[EngineSlot], spec: RolloutSpec, *, startup_timeout_s: float,
                 collective_timeout_s: float, worker_cls: type = RolloutWorker, wait: bool = True):
        self.engines = list(engines)
        super().__init__("rollout", worker_cls, [e.slot for e in engines], startup_timeout_s=startup_timeout_s,
                         collective_timeout_s=collective_timeout_s, distributed=False,
                         per_rank_kwargs=[dict(bundle_indices=e.bundle_indices, tp_worker_gpus=e.tp_worker_gpus)
                                          for e in engines],
                         init_kwargs=dict(spec=spec), env_vars=client_threads(spec), wait=wait)

    def generate_async(self, prompts: PromptBatch, sampling: SamplingParams) -> list[ray.ObjectRef]:
        """Prompts spread over the engines (contiguous shares)."""
        return self._scatter_async("generate", prompts, even=False, sampling=sampling)

    def generate(self, prompts: PromptBatch, sampling: SamplingParams) -> RolloutBatch:
        """Rows come back grouped by prompt, in prompt order."""
        return concat_batches([b for b in ray.get(self.generate_async(prompts, sampling)) if len(b)])

    def init_weight_sync_async(self, members: list[list[tuple[SyncGroupSpec, int]]]) -> list[ray.ObjectRef]:
        """members[e]: (group, sync rank) of each TP worker of engine e."""
        return [w.init_weight_sync.remote(m) for w, m in zip(self.workers, members)]

    def receive_weights_async(self, manifest: Manifest, version: int = 0) -> list[ray.ObjectRef]:
        """Every engine loads the actor's weights of `version` (which stamps what it generates next)."""
        return self._call_async("receive_weights", manifest, version)

    def device_uuids(self) -> list[list[str]]:
        """Per engine, the GPU UUID of each TP worker ("" off CUDA)."""
        return self._call("device_uuids")

    def sleep(self) -> None:
        self._call("sleep")

    def wake(self, tags: Sequence[str]) -> None:
        self._call("wake", list(tags))


class RewardGroup(WorkerGroup):
    def __init__(self, slots: Sequence[WorkerSlot], spec: RewardSpec, *, startup_timeout_s: float,
                 collective_timeout_s: float, wait: bool = True):
        super().__init__("reward", RewardWorker, slots, startup_timeout_s=startup_timeout_s,
                         collective_timeout_s=collective_timeout_s, distributed=False, init_kwargs=dict(spec=spec),
                         wait=wait)

    def score_async(self, rollout: RolloutBatch) -> list[ray.ObjectRef]:
        """Every response scored against its ground truth, in contiguous shares per reward worker."""
        items = [RewardItem(response=text, ground_truth=gt, data_source=src, extra=dict(extra))
                 for text, gt, src, extra in zip(rollout.response_texts, rollout.ground_truths,
                                                 rollout.data_sources, rollout.extra_infos)]
        return [w.score.remote([items[i] for i in rows])
                for w, rows in zip(self.workers, chunk_rows(len(items), self.world_size))]

    @staticmethod
    def gather_scores(refs: list[ray.ObjectRef]) -> ScoreBatch:
        return ScoreBatch(results=[r for part in ray.get(refs) for r in part.results])

    def score(self, rollout: RolloutBatch) -> ScoreBatch:
        return self.gather_scores(self.score_async(rollout))


class PolicyGroup(WorkerGroup):
    """What actor and reference groups share: per-token logprobs of a batch split over ranks."""

    def compute_logprobs_async(self, batch: TrainBatch, temperature: float,
                               token_budget: int | None = None) -> list[ray.ObjectRef]:
        return self._scatter_async("compute_logprobs", batch, even=False, temperature=temperature,
                                   token_budget=token_budget)

    def device_uuids(self) -> list[str]:
        """The GPU UUID of each rank ("" off CUDA)."""
        return self._call("device_uuid")

    def onload(self) -> None:
        self._call("onload")

    def offload(self) -> None:
        self._call("offload")


class RefGroup(PolicyGroup):
    def __init__(self, slots: Sequence[WorkerSlot], *, engine_kind: str, spec: EngineSpec, startup_timeout_s: float,
                 collective_timeout_s: float, wait: bool = True):
        super().__init__("ref", RefWorker, slots, startup_timeout_s=startup_timeout_s,
                         collective_timeout_s=collective_timeout_s, distributed=True,
                         init_kwargs=dict(engine_kind=engine_kind, spec=spec), wait=wait)


class ActorGroup(PolicyGroup):
    def __init__(self, slots: Sequence[WorkerSlot], *, engine_kind: str, spec: EngineSpec, loss: LossSettings,
                 startup_timeout_s: float, collective_timeout_s: float, worker_cls: type = ActorWorker,
                 wait: bool = True):
        super().__init__("actor", worker_cls, slots, startup_timeout_s=startup_timeout_s,
                         collective_timeout_s=collective_timeout_s, distributed=True,
                         init_kwargs=dict(engine_kind=engine_kind, spec=spec, loss=loss), wait=wait)

    def update_async(self, batch: TrainBatch, *, temperature: float, kl_coef: float, mini_batches: int,
                     ppo_epochs: int, token_budget: int | None = None) -> list[ray.ObjectRef]:
        """Each rank trains on its contiguous share of the batch; one metrics dict per rank."""
        return self._scatter_async("update", batch, temperature=temperature, kl_coef=kl_coef,
                                   mini_batches=mini_batches, ppo_epochs=ppo_epochs, token_budget=token_budget)

    def sft_update_async(self, batch: TrainBatch) -> list[ray.ObjectRef]:
        """One SFT optimizer step, each rank on its contiguous share; one metrics dict per rank."""
        return self._scatter_async("sft_update", batch)

    def weight_manifest(self, dtype: str) -> Manifest:
        return ray.get(self._call_rank0_async("weight_manifest", dtype))

    def init_weight_sync_async(self, specs: list[SyncGroupSpec | None]) -> list[ray.ObjectRef]:
        """specs[r]: the group actor rank r sends to, or None."""
        return [w.init_weight_sync.remote(s) for w, s in zip(self.workers, specs)]

    def send_weights_async(self, manifest: Manifest) -> list[ray.ObjectRef]:
        """Every rank gathers (a collective); rank 0's ref carries the sent fingerprints."""
        return self._call_async("send_weights", manifest)

    def full_weights(self) -> dict[str, Any]:
        return self._call("full_weights")[0]

    def save(self, path: str | os.PathLike) -> None:
        """Every rank writes its shard of weights, optimizer and schedule state into the directory `path`."""
        self._call("save", str(path))

    def load(self, path: str | os.PathLike) -> None:
        """Inverse of `save`."""
        self._call("load", str(path))

    def save_hf(self, out: str | os.PathLike) -> Path:
        """The policy as a Hugging Face model directory `out` (every rank gathers; rank 0 writes)."""
        return Path(self._call("save_hf", str(out))[0])
