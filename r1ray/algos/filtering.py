"""Sample filtering and shaping from DAPO (Yu et al. 2025): dynamic sampling and overlong handling."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from r1ray.algos.groups import group_stats

logger = logging.getLogger(__name__)


def dynamic_sampling_filter(rewards: Tensor, group_size: int) -> tuple[Tensor, float]:
    """DAPO dynamic sampling: keeps only the groups whose rewards differ.

    A group whose valid rewards are all equal (all right, all wrong, a single scorable sample, or
    nothing scorable) has zero group-relative advantage everywhere, so it adds no gradient but still
    dilutes the batch; DAPO over-samples and drops such groups.

    Args:
        rewards: ``(N,)`` scalar rewards, ``N = P * group_size`` ordered group by group; NaN marks an
            unscorable sample and does not count as a distinct value.
        group_size: ``G``, samples per prompt; must divide ``N``.

    Returns:
        ``(keep, frac_zero_std)``: ``keep`` is an ``(N,)`` bool mask, equal within each group, True for
        the samples of kept groups; ``frac_zero_std`` is the fraction of the ``P`` groups dropped
        (0.0 for an empty batch), logged as ``frac_reward_zero_std``.
    """
    stats = group_stats(rewards, group_size)
    keep = stats.usable.expand(-1, group_size).reshape(-1)
    num_groups = stats.usable.shape[0]
    dropped = num_groups - int(stats.usable.sum().item())
    return keep, (dropped / num_groups if num_groups else 0.0)


def overlong_reward_shaping(
    response_lengths: Tensor, max_response_length: int, buffer_len: int, penalty_factor: float
) -> Tensor:
    """DAPO soft overlong punishment: a length penalty added to the reward of near-truncated responses.

    With ``L_max = max_response_length`` and ``L_cache = buffer_len``:
    ``0`` for ``L <= L_max - L_cache``, ``(L_max - L_cache - L) / L_cache * penalty_factor`` inside the
    buffer (reaching ``-penalty_factor`` at ``L == L_max``), and ``-penalty_factor`` beyond ``L_max``.

    Args:
        response_lengths: ``(N,)`` integer response lengths in tokens.
        max_response_length: ``L_max``, the generation limit.
        buffer_len: ``L_cache``, the width of the linear ramp; 0 gives a hard step at ``L_max``.
        penalty_factor: the penalty at and beyond ``L_max`` (a positive magnitude).

    Returns:
        ``(N,)`` float32 penalties in ``[-penalty_factor, 0]``, to add to the task reward.
    """
    if not 0 <= buffer_len <= max_response_length:
        raise ValueError(
            f"need 0 <= buffer_len <= max_response_length; got buffer_len={buffer_len}, "
            f"max_response_length={max_response_length}"
        )
    if penalty_factor < 0:
        raise ValueError(f"penalty_factor is a magnitude and must be >= 0, got {penalty_factor}")
    lengths = response_lengths.to(torch.float32)
    if buffer_len == 0:
        return torch.where(lengths > max_response_length, -float(penalty_factor), 0.0)
    ramp = (max_response_length - buffer_len - lengths) / buffer_len * penalty_factor
    return ramp.clamp(min=-float(penalty_factor), max=0.0)


def overlong_loss_mask(mask: Tensor, truncated: Tensor) -> Tensor:
    """DAPO overlong filtering: removes truncated responses from the loss.

    A response cut off at the length limit is penalised for a reason unrelated to its reasoning, so its
    tokens are masked out instead of being trained on with a misleading reward.

    Args:
        mask: ``(B, T)`` response mask, any dtype.
        truncated: ``(B,)`` bool, True where generation hit the length limit.

    Returns:
        ``(B, T)`` mask of the same dtype, all zero on truncated rows and unchanged elsewhere.
    """
    if mask.dim() != 2 or truncated.shape != mask.shape[:1]:
        raise ValueError(f"truncated {tuple(truncated.shape)} must be (B,) for a (B, T) mask {tuple(mask.shape)}")
    return torch.where(truncated.bool().unsqueeze(-1), torch.zeros_like(mask), mask)
