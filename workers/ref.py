"""The reference policy: the same engine as the actor, frozen (no optimizer, no gradients)."""

from __future__ import annotations

from dataclasses import replace

from r1ray.workers.engines import EngineSpec
from r1ray.workers.policy import PolicyWorker


class RefWorker(PolicyWorker):
    def __init__(self, role: str, rank: int, world_size: int, engine_kind: str, spec: EngineSpec):
        super().__init__(role, rank, world_size, engine_kind, replace(spec, trainable=False))
