"""A rollout worker: one generation engine (HF generate or vLLM, same contract) and its lifecycle.

The worker is written once against `RolloutEngine`; what differs between engines lives in the engines.
It derives the engine's own sampling seed from the step's seed and its engine index, so no two engines
of a step (and no two steps) share a noise stream, and it records the colocation calls it receives
(`lifecycle`), which the controller's wake/sync/generate/sleep order is checked against.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Sequence

import torch

from r1ray.protocol import PromptBatch, RolloutBatch, SamplingParams, derive_seed
from r1ray.workers.base import TorchWorker
from r1ray.workers.engines import RolloutEngine, RolloutSpec, build_rollout_engine
from r1ray.workers.engines.base import FingerprintTable
from r1ray.workers.weight_sync import Manifest, SyncGroupSpec

class RolloutWorker(TorchWorker):
    def __init__(self, role: str, rank: int, world_size: int, spec: RolloutSpec,
                 bundle_indices: Sequence[int] = (), tp_worker_gpus: float = 0.0):
        super().__init__(role, rank, world_size)
        self.spec = spec
        self.bundle_indices = list(bundle_indices)
        self.tp_worker_gpus = tp_worker_gpus
        self.engine: RolloutEngine | None = None
        # The actor version (training steps) of the weights the engine holds: 0 until the first sync,
        # which the controller always sends before the first generation.
        self.weight_version = 0

    def setup(self) -> None:
        if self.spec.tensor_parallel_size > 1 and self.bundle_indices:
            # vLLM's Ray executor places this engine's TP workers on exactly these bundles.
            os.environ["VLLM_RAY_BUNDLE_INDICES"] = ",".join(str(i) for i in self.bundle_indices)
        if self.spec.tensor_parallel_size > 1 and self.tp_worker_gpus > 0:
            # Each TP worker asks Ray for this much GPU (vLLM's default is 1.0, which a bundle the actor and
            # reference already hold a share of can never grant: the engine would wait forever).
            os.environ["VLLM_RAY_PER_WORKER_GPUS"] = str(self.tp_worker_gpus)
        self.engine = build_rollout_engine(self.spec, self.device)
        self._record("setup")

    def generate(self, prompts: PromptBatch, sampling: SamplingParams) -> RolloutBatch:
        """Every response token stamped with the version of the weights that sampled it."""
        self._record("generate")
        batch = self.engine.generate(prompts, replace(sampling, seed=derive_seed(sampling.seed, self.rank)))
        versions = torch.full(batch.rollout_logprobs.shape, self.weight_version, dtype=torch.int64)
        return replace(batch, token_versions=versions)

    def advance(self, prompts: PromptBatch | None, keys: list[str], budgets: list[int], sampling: SamplingParams,
                abort: list[str], tokens: int) -> tuple[int, dict[str, tuple[list[int], list[float], bool, bool]], int]:
        """Free running with trainer.pause_mode=keep (engines that keep requests, `RolloutEngineEntry.
        keeps_requests`): (the weight version of every token produced, key -> (tokens, behaviour logprobs,
        finished, truncated) of each kept response since the last call, responses kept across updates so far).
        A call never spans a weight update: the sync is another call to this actor."""
        self._record("advance")
        if not hasattr(self.engine, "advance"):
            raise TypeError(f"rollout.engine={self.spec.engine} cannot keep requests across weight updates "
                            f"(trainer.pause_mode=keep); use trainer.pause_mode=abort")
        deltas = self.engine.advance(prompts, keys, budgets, replace(sampling, seed=derive_seed(sampling.seed, self.rank)),
                                     abort, tokens)
        rows = {k: (d.tokens, d.logprobs, d.finished, d.truncated) for k, d in deltas.items()}
        return self.weight_version, rows, self.engine.kept_over_updates

    def init_weight_sync(self, members: list[tuple[SyncGroupSpec, int]]) -> None:
        """Join the weight sync: (group, sync rank) of each of this engine's TP workers."""
        self.engine.init_weight_sync([{"spec": spec.to_dict(), "rank": rank} for spec, rank in members])

    def receive_weights(self, manifest: Manifest, version: int = 0) -> list[FingerprintTable]:
        """Receive and load the actor's weights of `version`; one fingerprint table per receiving process."""
        self._record("receive_weights")
        tables = self.engine.receive_weights(manifest)
        self.weight_version = version
        return tables

    def device_uuids(self) -> list[str]:
        """The GPU UUID of each of this engine's receiving processes ("" off CUDA)."""
        return self.engine.device_uuids()

    def sleep(self) -> None:
        self._record("sleep")
        self.engine.sleep()

    def wake(self, tags: Sequence[str]) -> None:
        self._record("wake:" + "+".join(tags))
        self.engine.wake(tags)

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.close()
        super().shutdown()
