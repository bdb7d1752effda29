"""Training and rollout engines behind the TrainEngine / RolloutEngine protocols (see `base.py`)."""

from __future__ import annotations

import torch

from r1ray.workers.engines.base import EngineSpec, LossFn, RolloutEngine, RolloutSpec, TrainEngine


DEEPSPEED_INSTALL = ("actor.engine=deepspeed needs DeepSpeed: DS_BUILD_OPS=0 pip install deepspeed==0.19.8 "
                     "(or pip install -e '.[deepspeed]')")


def build_train_engine(kind: str, spec: EngineSpec, device: torch.device) -> TrainEngine:
    """The engine named by `actor.engine`; imported lazily so that FSDP2 users need no DeepSpeed."""
    if kind == "fsdp2":
        from r1ray.workers.engines.fsdp2 import FSDP2Engine

        return FSDP2Engine(spec, device)
    if kind == "deepspeed":
        try:
            from r1ray.workers.engines.deepspeed_engine import DeepSpeedEngine
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.split(".")[0] != "deepspeed":
                raise
            raise ModuleNotFoundError(DEEPSPEED_INSTALL) from None
        return DeepSpeedEngine(spec, device)
    raise ValueError(f"actor.engine: unknown engine '{kind}' (available: fsdp2, deepspeed)")


def build_rollout_engine(spec: RolloutSpec, device: torch.device) -> RolloutEngine:
    """The engine named by `rollout.engine`; imported lazily so that HF users need no vLLM."""
    if spec.engine == "vllm":
        from r1ray.workers.engines.vllm_rollout import VLLMRolloutEngine

        return VLLMRolloutEngine(spec, device)
    if spec.engine == "hf":
        from r1ray.workers.engines.hf_rollout import HFRolloutEngine

        return HFRolloutEngine(spec, device)
    raise ValueError(f"rollout.engine: unknown engine '{spec.engine}' (available: hf, vllm)")


__all__ = ["DEEPSPEED_INSTALL", "EngineSpec", "LossFn", "RolloutEngine", "RolloutSpec", "TrainEngine",
           "build_rollout_engine", "build_train_engine"]
