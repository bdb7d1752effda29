"""Training and rollout engines behind the TrainEngine / RolloutEngine protocols (see `base.py`)."""

from __future__ import annotations

import torch

from r1ray.workers.engines.base import EngineSpec, LossFn, RolloutEngine, RolloutSpec, TrainEngine


def build_train_engine(kind: str, spec: EngineSpec, device: torch.device) -> TrainEngine:
    """The engine named by `actor.engine` (config validation has already rejected unavailable ones)."""
    if kind == "fsdp2":
        from r1ray.workers.engines.fsdp2 import FSDP2Engine

        return FSDP2Engine(spec, device)
    raise ValueError(f"actor.engine: unknown engine '{kind}' (available: fsdp2)")


def build_rollout_engine(spec: RolloutSpec, device: torch.device) -> RolloutEngine:
    """The engine named by `rollout.engine`; imported lazily so that HF users need no vLLM."""
    if spec.engine == "vllm":
        from r1ray.workers.engines.vllm_rollout import VLLMRolloutEngine

        return VLLMRolloutEngine(spec, device)
    if spec.engine == "hf":
        from r1ray.workers.engines.hf_rollout import HFRolloutEngine

        return HFRolloutEngine(spec, device)
    raise ValueError(f"rollout.engine: unknown engine '{spec.engine}' (available: hf, vllm)")


__all__ = ["EngineSpec", "LossFn", "RolloutEngine", "RolloutSpec", "TrainEngine", "build_rollout_engine",
           "build_train_engine"]
