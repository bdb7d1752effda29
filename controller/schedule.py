"""Per-step values that follow the config's schedules, and batch-shape arithmetic."""

from __future__ import annotations

import math

from r1ray.config import R1RayConfig, RolloutConfig
from r1ray.workers.placement import Placement


def response_budget(rollout: RolloutConfig, step: int) -> int:
    """The response length allowed at `step` (1-based): the last schedule entry whose start is <= step - 1.

    The engines are sized for `max_response_length` once, so growing the budget (8k -> 20k) inside a run
    needs no restart; only the per-call `max_new_tokens` changes.
    """
    budget = rollout.max_response_length
    for start, length in rollout.response_length_schedule:
        if step - 1 >= start:
            budget = length
    return budget


def groups_unit(cfg: R1RayConfig, placement: Placement) -> int:
    """Smallest number of prompt groups whose sequences split evenly over actor ranks x mini-batches."""
    ranks = placement.pools[placement.roles["actor"]].size
    per_step = ranks * cfg.algorithm.mini_batches
    return per_step // math.gcd(per_step, cfg.rollout.n)
