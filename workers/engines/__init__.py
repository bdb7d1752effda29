"""Training and rollout engines behind the TrainEngine / RolloutEngine protocols (see `base.py`).

Which class an engine name builds, and what it needs installed, is the registry's (`r1ray.engines`); an
engine's module is imported only here, when a worker builds it, so FSDP2 users need no DeepSpeed and HF
users no vLLM.
"""

from __future__ import annotations

import importlib

import torch

from r1ray.engines import ROLLOUT_ENGINES, TRAIN_ENGINES, EngineRegistry
from r1ray.workers.engines.base import EngineSpec, LossFn, RolloutEngine, RolloutSpec, TrainEngine


def build_train_engine(kind: str, spec: EngineSpec, device: torch.device) -> TrainEngine:
    """The engine named by `actor.engine`."""
    return _engine_class(TRAIN_ENGINES, kind, "gpu" if device.type == "cuda" else "cpu")(spec, device)


def build_rollout_engine(spec: RolloutSpec, device: torch.device) -> RolloutEngine:
    """The engine named by `rollout.engine`."""
    return _engine_class(ROLLOUT_ENGINES, spec.engine, spec.device)(spec, device)


def _engine_class(registry: EngineRegistry, name: str, device: str) -> type:
    """Import the class of engine `name`; its missing package is reported with the registry's fix-it line."""
    module, _, cls = registry.get(name).builder.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as exc:
        package = registry.entries[name].package
        message = registry.missing_package(name, device)
        if package is None or message is None or (exc.name or "").split(".")[0] != package.name:
            raise
        raise ModuleNotFoundError(message) from None


__all__ = ["EngineSpec", "LossFn", "RolloutEngine", "RolloutSpec", "TrainEngine", "build_rollout_engine",
           "build_train_engine"]
