"""The learning-rate schedule every training engine uses: linear warmup, then constant or cosine decay.

One LambdaLR over the engine's own torch optimizer, stepped once per optimizer step (skipped steps too),
so that FSDP2 and DeepSpeed follow the same schedule step for step.
"""

from __future__ import annotations

import math

import torch

from r1ray.workers.engines.base import EngineSpec


def lr_factor(spec: EngineSpec, step: int) -> float:
    """The multiple of `spec.lr` used by optimizer step `step` (0-based)."""
    if step < spec.warmup_steps:
        return (step + 1) / spec.warmup_steps
    if spec.lr_schedule == "constant":
        return 1.0
    span = max(1, spec.total_optimizer_steps - spec.warmup_steps)
    progress = min(1.0, (step - spec.warmup_steps) / span)
    return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, spec: EngineSpec) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(spec, step))
