"""Statistics of reward groups: the ``G`` samples drawn for one prompt form a group.

``rewards`` is ``(N,)`` with ``N = P * G``, ordered group by group. Non-finite rewards (NaN for an
unscorable sample) are left out of every statistic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from r1ray.algos.masking import compute_dtype

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupStats:
    """Per-group statistics over the scorable members; ``P`` groups of ``G`` samples."""

    filled: Tensor  # (P, G) rewards with unscorable entries set to 0
    valid: Tensor  # (P, G) bool, True where the reward is finite
    count: Tensor  # (P, 1) number of valid members, as a float
    mean: Tensor  # (P, 1) mean of the valid members (0 for an empty group)
    centred: Tensor  # (P, G) reward minus group mean, 0 at unscorable entries
    std: Tensor  # (P, 1) sample standard deviation (divides by count - 1)
    usable: Tensor  # (P, 1) bool: at least 2 valid members and a non-zero spread


def group_stats(rewards: Tensor, group_size: int) -> GroupStats:
    """Groups ``rewards`` ``(N,)`` into ``(N // group_size, group_size)`` and computes masked statistics."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape (N,), got {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"group_size must be a positive divisor of the number of rewards; got group_size={group_size} "
            f"for {rewards.numel()} rewards"
        )
    grouped = rewards.detach().to(compute_dtype(rewards.dtype)).reshape(-1, group_size)
    valid = torch.isfinite(grouped)
    filled = torch.where(valid, grouped, 0.0)
    count = valid.sum(dim=-1, keepdim=True).to(grouped.dtype)
    mean = filled.sum(dim=-1, keepdim=True) / count.clamp(min=1)
    centred = torch.where(valid, filled - mean, 0.0)
    std = ((centred**2).sum(dim=-1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
    # Decide "all equal" on the raw values: a mean of equal floats can be off by one ulp, and that
    # rounding noise divided by eps would otherwise become a large spurious advantage.
    highest = torch.where(valid, grouped, -torch.inf).amax(dim=-1, keepdim=True)
    lowest = torch.where(valid, grouped, torch.inf).amin(dim=-1, keepdim=True)
    usable = (count >= 2) & (highest > lowest)
    return GroupStats(filled, valid, count, mean, centred, std, usable)
