"""Training and rollout engines behind the TrainEngine / RolloutEngine protocols (see `base.py`)."""

from __future__ import annotations

import torch

from r1ray.workers.engines.base import EngineSpec, LossFn, RolloutEngine, TrainEngine


def build_train_engine(kind: str, spec: EngineSpec, device: torch.device) -> TrainEngine:
    """The engine named by `actor.engine` (config validation has already rejected unavailable ones)."""
    if kind == "fsdp2":
        from r1ray.workers.engines.fsdp2 import FSDP2Engine

        return FSDP2Engine(spec, device)
    raise ValueError(f"actor.engine: unknown engine '{kind}' (available: fsdp2)")


__all__ = ["EngineSpec", "LossFn", "RolloutEngine", "TrainEngine", "build_train_engine"]
