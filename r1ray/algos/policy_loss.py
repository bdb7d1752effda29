"""The clipped policy-gradient loss of PPO as GRPO, DAPO and Dr. GRPO use it."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from r1ray.algos.masking import aggregate_loss, as_bool_mask, compute_dtype, masked_mean

logger = logging.getLogger(__name__)

# exp(20) ~ 4.9e8: a policy that moved this far from the behaviour policy on a token is already
# clipped, and a larger exponent would overflow to inf.
_LOG_RATIO_BOUND = 20.0


def _check_policy_inputs(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip: tuple[float, float]
) -> None:
    """Rejects mismatched shapes and clip ranges that would invert or disable the trust region."""
    if logprobs.dim() != 2 or old_logprobs.shape != logprobs.shape or mask.shape != logprobs.shape:
        raise ValueError(
            "logprobs, old_logprobs and mask must share one (B, T) shape; got "
            f"{tuple(logprobs.shape)}, {tuple(old_logprobs.shape)}, {tuple(mask.shape)}"
        )
    if advantages.shape not in (logprobs.shape[:1], logprobs.shape):
        raise ValueError(
            f"advantages must be (B,) or (B, T) = {tuple(logprobs.shape)}; got {tuple(advantages.shape)}"
        )
    clip_low, clip_high = clip
    if not 0.0 <= clip_low < 1.0 or clip_high < 0.0:
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0; got clip_low={clip_low}, clip_high={clip_high}")


def _clipped_token_losses(
    log_ratio: Tensor, advantages: Tensor, clip: tuple[float, float], dual_clip: float | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token clipped surrogate losses from ``(B, T)`` log-ratios and advantages.

    Returns ``(losses, clip_active, dual_active)``, all ``(B, T)``; the last two are bool.
    """
    clip_low, clip_high = clip
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    losses = torch.maximum(unclipped, clipped)
    clip_active = clipped > unclipped
    dual_active = torch.zeros_like(clip_active)
    if dual_clip is not None:
        cap = -advantages * dual_clip
        dual_active = (advantages < 0) & (losses > cap)
        losses = torch.where(dual_active, cap, losses)
    return losses, clip_active, dual_active


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    agg: str = "token-mean",
    dual_clip: float | None = None,
    norm_len: int | None = None,
    weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Negated PPO clipped surrogate (Schulman et al. 2017) with decoupled clip bounds.

    Per token, with ``ratio = exp(logp - old_logp)`` and advantage ``A``:
    ``loss = max(-A * ratio, -A * clip(ratio, 1 - clip_low, 1 + clip_high))``. A ``clip_high`` larger
    than ``clip_low`` ("clip-higher", DAPO, Yu et al. 2025) lets low-probability tokens grow and
    prevents entropy collapse. With ``dual_clip = c > 1`` (Ye et al. 2020, "Mastering Complex Control in
    MOBA Games with Deep RL"), tokens with ``A < 0`` have their loss capped at ``-A * c`` so one stale
    token with a huge ratio cannot dominate the update.

    Args:
        logprobs: ``(B, T)`` log-probabilities of the sampled tokens under the current policy.
        old_logprobs: ``(B, T)`` under the policy that generated the batch (treated as a constant).
        advantages: ``(B,)`` per-sequence (broadcast to every token) or ``(B, T)`` per-token advantages.
        mask: ``(B, T)``; non-zero marks a valid response token. Rows with no valid token contribute
            nothing; an all-empty mask gives a loss of 0 whose gradient is 0.
        clip_low: lower clip ``eps_low``; the ratio is clipped below at ``1 - clip_low``.
        clip_high: upper clip ``eps_high``; the ratio is clipped above at ``1 + clip_high``.
        agg: the aggregation, one of ``LOSS_AGGREGATIONS`` (see ``aggregate_loss``).
        dual_clip: the dual-clip constant ``c > 1``, or ``None`` to disable it.
        norm_len: the constant divisor of ``"seq-mean-token-sum-norm"``; default ``T``.
        weights: ``(B, T)`` rollout-correction importance weights (see ``rollout_correction``), treated as
            constants and multiplied into each token's loss; ``None``: all 1.

    Returns:
        ``(loss, metrics)``: the scalar loss in ``logprobs.dtype``, and python floats ``pg_loss``,
        ``pg_clipfrac`` (fraction of valid tokens where the ratio clip is active), ``pg_clipfrac_lower``
        (fraction where the dual clip is active) and ``ppo_kl`` (mean of ``old_logp - logp``, the k1
        estimate of KL(old || new) over valid tokens).
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (it caps the loss at -A * dual_clip), got {dual_clip}")
    # Padding positions are zeroed before exp so garbage there (even -inf or NaN) cannot reach the
    # gradient: torch.where passes a zero gradient, where multiplying by the mask would give 0 * NaN.
    valid, token_advantages, log_ratio, _ = prepare_inputs(logprobs, old_logprobs, advantages, mask,
                                                           (clip_low, clip_high))
    token_losses, clip_active, dual_active = _clipped_token_losses(
        log_ratio, token_advantages, (clip_low, clip_high), dual_clip
    )
    token_losses = apply_weights(token_losses, weights, valid)
    loss = aggregate_loss(token_losses, valid, agg, norm_len=norm_len).to(logprobs.dtype)
    return loss, loss_metrics(loss, log_ratio, clip_active, dual_active, valid)


def apply_weights(token_losses: Tensor, weights: Tensor | None, valid: Tensor) -> Tensor:
    """Per-token losses times constant ``(B, T)`` correction weights (padding stays 0)."""
    if weights is None:
        return token_losses
    if weights.shape != token_losses.shape:
        raise ValueError(f"weights must be (B, T) = {tuple(token_losses.shape)}; got {tuple(weights.shape)}")
    return token_losses * torch.where(valid, weights.detach().to(token_losses.dtype), 0.0)


def prepare_inputs(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor,
                   clip: tuple[float, float]) -> tuple[Tensor, Tensor, Tensor, torch.dtype]:
    """Checked inputs as (valid (B, T) bool, token advantages (B, T), log-ratio (B, T), compute dtype):
    padding zeroed before any exp, the log-ratio bounded. Shared by every loss of the registry."""
    _check_policy_inputs(logprobs, old_logprobs, advantages, mask, clip)
    valid = as_bool_mask(mask)
    dtype = compute_dtype(logprobs.dtype)
    token_advantages = advantages.detach().to(dtype)
    if token_advantages.dim() == 1:
        token_advantages = token_advantages.unsqueeze(-1).expand_as(logprobs)
    token_advantages = torch.where(valid, token_advantages, 0.0)
    log_ratio = torch.where(valid, logprobs.to(dtype) - old_logprobs.detach().to(dtype), 0.0)
    return valid, token_advantages, log_ratio.clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND), dtype


@torch.no_grad()
def loss_metrics(
    loss: Tensor, log_ratio: Tensor, clip_active: Tensor, dual_active: Tensor, valid: Tensor
) -> dict[str, float]:
    """The detached policy-loss metrics as python floats; all tensors but ``loss`` are ``(B, T)``."""
    values = torch.stack(
        [
            loss.to(log_ratio.dtype),
            masked_mean(clip_active.to(log_ratio.dtype), valid),
            masked_mean(dual_active.to(log_ratio.dtype), valid),
            masked_mean(-log_ratio, valid),
        ]
    )
    # One device-to-host copy instead of four .item() synchronisations per micro-batch.
    pg_loss, pg_clipfrac, pg_clipfrac_lower, ppo_kl = values.tolist()
    return {"pg_loss": pg_loss, "pg_clipfrac": pg_clipfrac, "pg_clipfrac_lower": pg_clipfrac_lower, "ppo_kl": ppo_kl}
