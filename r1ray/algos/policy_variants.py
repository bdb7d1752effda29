"""Two alternatives to the clipped token-level surrogate, with the same signature as ``policy_loss``.

- GSPO clips one ratio per sequence instead of one per token.
- CISPO clips the importance weight, not the update: every token keeps a gradient.

Both read the same ``(B, T)`` inputs as ``policy_loss``, honour ``mask``, ``agg`` and the rollout-correction
``weights``, and report the same metric names, so that a run can switch ``algorithm.policy_loss`` and keep
its dashboards.
"""

from __future__ import annotations

import torch
from torch import Tensor

from r1ray.algos.masking import aggregate_loss
from r1ray.algos.policy_loss import apply_weights, loss_metrics, prepare_inputs


def gspo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    agg: str = "seq-mean-token-mean",
    dual_clip: float | None = None,
    norm_len: int | None = None,
    weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Group Sequence Policy Optimization (Zheng et al. 2025, "Group Sequence Policy Optimization").

    The ratio of sequence ``i`` is the geometric mean of its token ratios,
    ``s_i = exp(mean_t (logp - old_logp))``, clipped to ``[1 - clip_low, 1 + clip_high]`` and applied to
    every token: ``loss_t = max(-A_t * s_it, -A_t * clip(s_it))``. This is the paper's GSPO-token form,
    ``s_it = sg[s_i] * p_t / sg[p_t]``: its value is ``s_i`` on every token and its gradient is the
    token's own ``∇ log p_t`` scaled by ``s_i``, so with sequence advantages it equals sequence-level GSPO.
    The paper clips far tighter than PPO (3e-4 and 4e-4, the defaults here; set ``algorithm.clip_low``
    and ``clip_high`` accordingly) and averages per sequence (``seq-mean-token-mean``). ``dual_clip`` is
    accepted for a uniform signature and must be ``None``: the sequence clip already bounds every token.
    """
    if dual_clip is not None:
        raise ValueError("gspo: dual_clip does not apply (the sequence ratio is clipped); set algorithm.dual_clip=0")
    valid, token_advantages, log_ratio, dtype = prepare_inputs(logprobs, old_logprobs, advantages, mask,
                                                               (clip_low, clip_high))
    lengths = valid.sum(-1, keepdim=True).clamp(min=1).to(dtype)
    seq_log_ratio = log_ratio.sum(-1, keepdim=True) / lengths                       # (B, 1)
    # The token form: value s_i, gradient s_i * ∇ log p_t.
    current = logprobs.to(dtype)
    token_log_ratio = torch.where(valid, current - current.detach() + seq_log_ratio.detach(), 0.0)
    ratio = torch.exp(token_log_ratio)
    unclipped = -token_advantages * ratio
    clipped = -token_advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    token_losses = apply_weights(torch.maximum(unclipped, clipped), weights, valid)
    loss = aggregate_loss(token_losses, valid, agg, norm_len=norm_len).to(logprobs.dtype)
    clip_active = clipped > unclipped
    return loss, loss_metrics(loss, log_ratio, clip_active, torch.zeros_like(clip_active), valid)


def cispo_loss(
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
    """Clipped IS-weight Policy Optimization (MiniMax-M1 report, MiniMax 2025).

    ``loss_t = -sg[clip(r_t, 1 - clip_low, 1 + clip_high)] * A_t * logp_t`` with ``r_t = exp(logp - old)``:
    a REINFORCE gradient weighted by a clipped, stop-gradient importance weight. Unlike PPO's clip, which
    zeroes the gradient of a clipped token, every token keeps its gradient (the report's motivation: the
    rare "fork" tokens PPO clips away are the ones reflection depends on). ``pg_clipfrac`` counts the
    tokens whose weight was clipped. ``dual_clip`` must be ``None``: the weight is already bounded.
    """
    if dual_clip is not None:
        raise ValueError("cispo: dual_clip does not apply (the IS weight is clipped); set algorithm.dual_clip=0")
    valid, token_advantages, log_ratio, dtype = prepare_inputs(logprobs, old_logprobs, advantages, mask,
                                                               (clip_low, clip_high))
    ratio = torch.exp(log_ratio)
    weight = ratio.clamp(1.0 - clip_low, 1.0 + clip_high).detach()
    current = torch.where(valid, logprobs.to(dtype), 0.0)
    token_losses = apply_weights(-weight * token_advantages * current, weights, valid)
    loss = aggregate_loss(token_losses, valid, agg, norm_len=norm_len).to(logprobs.dtype)
    clip_active = valid & (weight != ratio)
    return loss, loss_metrics(loss, log_ratio, clip_active, torch.zeros_like(clip_active), valid)
