"""The reference policy: the same engine as the actor, frozen (no optimizer, no gradients)."""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor

from r1ray.protocol import TrainBatch

from r1ray.workers.engines import EngineSpec
from r1ray.workers.policy import PolicyWorker


class RefWorker(PolicyWorker):
    def __init__(self, role: str, rank: int, world_size: int, engine_kind: str, spec: EngineSpec):
        super().__init__(role, rank, world_size, engine_kind, replace(spec, trainable=False))

    def compute_logprobs(self, batch: TrainBatch, temperature: float) -> Tensor:
        # Recorded so that tests can see which rows the reference pass covered (dynamic sampling filters
        # groups before it).
        self._record(f"logprobs:{len(batch)}")
        return super().compute_logprobs(batch, temperature)
