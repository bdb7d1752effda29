"""A rollout worker: one generation engine (HF generate or vLLM) and its end of the weight sync."""

from __future__ import annotations

from typing import Any

from r1ray.protocol import PromptBatch, RolloutBatch, SamplingParams
from r1ray.workers.base import Worker
from r1ray.workers.weight_sync import Manifest, SyncGroup, SyncGroupSpec, checksum_of


class RolloutWorker(Worker):
    def __init__(self, role: str, rank: int, world_size: int, engine_kind: str, engine_kwargs: dict[str, Any]):
        super().__init__(role, rank, world_size)
        self.engine_kind = engine_kind
        self.engine_kwargs = engine_kwargs
        self.engine = None
        self.sync: SyncGroup | None = None

    def setup(self) -> None:
        if self.engine_kind == "vllm":
            from r1ray.workers.engines.vllm_rollout import VLLMRolloutEngine

            self.engine = VLLMRolloutEngine(**self.engine_kwargs)
        else:
            from r1ray.workers.engines.hf_rollout import HFRolloutEngine

            self.engine = HFRolloutEngine(device=self.device, **self.engine_kwargs)

    def generate(self, prompts: PromptBatch, sampling: SamplingParams) -> RolloutBatch:
        return self.engine.generate(prompts, sampling)

    def init_weight_sync(self, spec: SyncGroupSpec) -> None:
        """Join the weight-sync group as sync rank 1 + this worker's rank (vLLM: inside its workers)."""
        if self.engine_kind == "vllm":
            self.engine.init_weight_sync(spec, self.rank)
        else:
            self.sync = SyncGroup(spec, 1 + self.rank, self.device)

    def receive_weights(self, manifest: Manifest) -> str:
        """Receive and load the actor's weights; return the checksum of what the engine now holds."""
        if self.engine_kind == "vllm":
            return self.engine.receive_weights(manifest)
        self.engine.load_weights(self.sync.receive(manifest))
        return checksum_of(manifest, dict(self.engine.named_weights()))

    def weights(self) -> dict:
        """The engine's weights by name, on CPU (tests compare them with the actor's)."""
        return {name: t.detach().cpu().clone() for name, t in self.engine.named_weights()}

    def sleep(self) -> None:
        self.engine.sleep()

    def wake(self) -> None:
        self.engine.wake()

    def shutdown(self) -> None:
        if self.sync is not None:
            self.sync.close()
        super().shutdown()
