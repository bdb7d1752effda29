"""Token-level rewards and generalised advantage estimation, for KL-in-reward and critic-based runs.

Shapes: ``B`` sequences, ``T`` response tokens; a mask is ``(B, T)``, bool or numeric, non-zero at
valid response tokens. Everything here builds training *targets*, so inputs are detached.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from r1ray.algos.masking import as_bool_mask, compute_dtype, output_dtype

logger = logging.getLogger(__name__)


def _check_token_shapes(**tensors: Tensor) -> tuple[int, int]:
    """Checks that all tensors share one ``(B, T)`` shape and returns it."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 2 or any(shape != first for shape in shapes.values()):
        raise ValueError(f"expected tensors of one shared (B, T) shape, got {shapes}")
    return first[0], first[1]


def token_level_rewards(
    scores: Tensor, response_mask: Tensor, *, kl: Tensor | None = None, kl_coef: float = 0.0
) -> Tensor:
    """Places each sequence's score on its last valid response token, optionally minus a KL penalty.

    ``R[b, t] = score[b] * [t == last valid token of b] - kl_coef * kl[b, t] * mask[b, t]``: the
    outcome reward arrives when the response ends, and the KL to the reference is paid per token, as
    in InstructGPT (Ouyang et al. 2022) and REINFORCE++ (Hu 2025) when KL is placed in the reward.

    Args:
        scores: ``(B,)`` sequence scores. A non-finite (unscorable) score places 0; mask such samples
            out of the loss, since a 0 reward is not a neutral outcome.
        response_mask: ``(B, T)``; non-zero marks a valid response token.
        kl: ``(B, T)`` per-token KL estimate (see ``kl_penalty``), or ``None``.
        kl_coef: the KL weight ``beta``.

    Returns:
        ``(B, T)`` token rewards in ``scores.dtype`` (float32 for integer scores), 0 at padding. A row
        without any valid token receives nothing.
    """
    if response_mask.dim() != 2 or scores.shape != response_mask.shape[:1]:
        raise ValueError(
            f"scores of shape {tuple(scores.shape)} do not match a (B, T) response_mask of shape "
            f"{tuple(response_mask.shape)}"
        )
    batch, length = response_mask.shape
    valid = as_bool_mask(response_mask)
    dtype = compute_dtype(scores.dtype)
    rewards = torch.zeros(batch, length, dtype=dtype, device=scores.device)
    if length > 0:
        positions = torch.arange(length, device=valid.device).expand(batch, length)
        last = torch.where(valid, positions, -1).amax(dim=-1)
        placed = torch.where(torch.isfinite(scores) & (last >= 0), scores.detach().to(dtype), 0.0)
        rewards.scatter_(1, last.clamp(min=0).unsqueeze(-1), placed.unsqueeze(-1))
    if kl is not None:
        _check_token_shapes(kl=kl, response_mask=response_mask)
        rewards = rewards - kl_coef * torch.where(valid, kl.detach().to(dtype), 0.0)
    return rewards.to(output_dtype(scores.dtype))


def gae_advantages(
    rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0, lam: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2015, "High-Dimensional Continuous Control
    Using Generalized Advantage Estimation"), over the valid tokens of each sequence.

    ``delta_t = r_t + gamma * V_{t'} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t'}``, where ``t'`` is
    the next *valid* token after ``t`` (``V`` and ``A`` are 0 past the last one). Padding steps are
    skipped rather than treated as zero-reward steps, so a masked gap inside a sequence (for example a
    tool output in a multi-turn response) neither propagates nor discounts anything.

    Args:
        rewards: ``(B, T)`` token-level rewards (see ``token_level_rewards``).
        values: ``(B, T)`` critic values ``V(s_t)``.
        mask: ``(B, T)``; non-zero marks a valid response token.
        gamma: discount factor.
        lam: GAE ``lambda``; 1 gives Monte-Carlo returns minus values, 0 gives one-step TD errors.

    Returns:
        ``(advantages, returns)``, each ``(B, T)`` in ``rewards.dtype``, 0 at padding.
        ``returns = advantages + values`` is the critic's regression target. Both are detached.
    """
    batch, length = _check_token_shapes(rewards=rewards, values=values, mask=mask)
    valid = as_bool_mask(mask)
    dtype = compute_dtype(rewards.dtype)
    token_rewards = torch.where(valid, rewards.detach().to(dtype), 0.0)
    token_values = torch.where(valid, values.detach().to(dtype), 0.0)
    next_value = torch.zeros(batch, dtype=dtype, device=rewards.device)
    next_advantage = torch.zeros_like(next_value)
    reversed_steps = []
    for t in reversed(range(length)):
        delta = token_rewards[:, t] + gamma * next_value - token_values[:, t]
        advantage = torch.where(valid[:, t], delta + gamma * lam * next_advantage, 0.0)
        next_value = torch.where(valid[:, t], token_values[:, t], next_value)
        next_advantage = torch.where(valid[:, t], advantage, next_advantage)
        reversed_steps.append(advantage)
    if reversed_steps:
        advantages = torch.stack(reversed_steps[::-1], dim=1)
    else:
        advantages = torch.zeros(batch, 0, dtype=dtype, device=rewards.device)
    returns = torch.where(valid, advantages + token_values, 0.0)
    out_dtype = output_dtype(rewards.dtype)
    return advantages.to(out_dtype), returns.to(out_dtype)
