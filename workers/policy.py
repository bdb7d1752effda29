"""What the actor and the reference share: a TrainEngine over a policy and per-token logprobs."""

from __future__ import annotations

from torch import Tensor

from r1ray.protocol import TrainBatch
from r1ray.workers.base import TorchWorker
from r1ray.workers.engines import EngineSpec, TrainEngine, build_train_engine
from r1ray.workers.weight_sync import device_uuid


class PolicyWorker(TorchWorker):
    """Base of ActorWorker and RefWorker; the engine is built in `setup`, after the rendezvous."""

    def __init__(self, role: str, rank: int, world_size: int, engine_kind: str, spec: EngineSpec):
        super().__init__(role, rank, world_size)
        self.engine_kind = engine_kind
        self.spec = spec
        self.engine: TrainEngine | None = None
        self.offloaded = False

    def setup(self) -> None:
        self.engine = build_train_engine(self.engine_kind, self.spec, self.device)

    def compute_logprobs(self, batch: TrainBatch, temperature: float, token_budget: int | None = None) -> Tensor:
        """(b, R) logprobs of this rank's share of the batch, no grad, `token_budget` tokens per micro-batch."""
        logprobs, _ = self.engine.forward_logprobs(batch, temperature, token_budget=token_budget)
        return logprobs

    def device_uuid(self) -> str:
        return device_uuid(self.device)

    def onload(self) -> None:
        """Bring weights (and the actor's optimizer state) back to the device (colocated); a no-op when
        already there."""
        self._record("onload")
        if self.offloaded:
            self.engine.onload()
            self.offloaded = False

    def offload(self) -> None:
        """Free the device for the rollout engines on the same devices (colocated)."""
        self._record("offload")
        if not self.offloaded:
            self.engine.offload()
            self.offloaded = True
