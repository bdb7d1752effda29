"""Rollout correction: importance weights between the trainer's "old" policy and the engine that sampled.

The rollout engine samples from μ (its own kernels, precision and, in asynchronous runs, older weights);
the loss treats π_old (the actor's logprobs of the same tokens before the update) as the policy that
produced the data. Even with no staleness at all the two differ (vLLM and the trainer never agree to the
last bit), and the gap biases the gradient. The presets below reweight or drop tokens by
ρ = π_old / μ, computed from the logprobs both sides already return:

    none       weights 1 (the metrics are still reported)
    tis_token  truncated IS per token, w_t = min(ρ_t, cap)                      (cap 2; Yao et al. 2025, "Your
               Efficient RL Framework Secretly Brings You Off-Policy RL Training"; verl's token-level TIS)
    tis_seq    truncated IS per sequence, w = min(Π_t ρ_t, cap) on every token  (cap 2)
    mis_token  masked IS per token: w_t = ρ_t inside [low, high], else 0        (band 0.5-2)
    mis_seq    masked per sequence by the geometric mean g = exp(mean_t log ρ_t): every token of a sequence
               with g outside [low, high] gets 0, the others 1 (a filter, not a weight: g is not an
               unbiased ratio)                                                (band 0.5-2)
    icepop     two-sided token masking of IcePop (Ling team 2025): mis_token with band 0.5-5

`cap` and `band` override a preset's defaults (``algorithm.rollout_correction_cap`` / ``_band``); the
presets are defined, torch-free, in `r1ray/loss_spec.py`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from r1ray.algos.masking import as_bool_mask
from r1ray.loss_spec import ROLLOUT_CORRECTIONS, CorrectionPreset, resolve_preset

__all__ = ["ROLLOUT_CORRECTIONS", "CorrectionPreset", "correction_weights", "resolve_preset"]

_LOG_BOUND = 20.0      # exp(20) ~ 4.9e8: any ratio beyond it is truncated or masked anyway


@torch.no_grad()
def correction_weights(
    old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, preset: CorrectionPreset | None
) -> tuple[Tensor | None, dict[str, float]]:
    """``(B, T)`` weights for the per-token loss (None for no preset) and the correction metrics.

    Args:
        old_logprobs: ``(B, T)`` π_old, the actor's logprobs of the sampled tokens before the update.
        rollout_logprobs: ``(B, T)`` μ, the engine's logprobs of the same tokens.
        mask: ``(B, T)``; non-zero on valid response tokens.

    Metrics (over valid tokens): ``kl_k3`` = mean(ρ - 1 - log ρ), the k3 estimate of KL(μ || π_old) from
    μ's own samples; ``weight_p10/p50/p90``, quantiles of the final weights; ``truncated_frac`` and
    ``masked_frac``, the tokens whose weight the cap lowered and those the band zeroed.
    """
    valid = as_bool_mask(mask)
    log_rho = torch.where(valid, old_logprobs.float() - rollout_logprobs.float(), 0.0).clamp(-_LOG_BOUND, _LOG_BOUND)
    rho = torch.exp(log_rho)
    n_valid = valid.sum().clamp(min=1)
    kl_k3 = ((rho - 1.0 - log_rho) * valid).sum() / n_valid
    if preset is None:
        return None, {"kl_k3": float(kl_k3), "truncated_frac": 0.0, "masked_frac": 0.0}

    if preset.level == "token":
        raw = rho
    else:
        lengths = valid.sum(-1, keepdim=True).clamp(min=1)
        seq_log = log_rho.sum(-1, keepdim=True)
        if preset.mode == "mask":
            seq_log = seq_log / lengths                      # geometric mean of the token ratios
        raw = torch.exp(seq_log.clamp(-_LOG_BOUND, _LOG_BOUND)).expand_as(rho)

    if preset.mode == "truncate":
        weights = raw.clamp(max=preset.cap)
        truncated, masked = valid & (raw > preset.cap), torch.zeros_like(valid)
    else:
        low, high = preset.band
        inside = (raw >= low) & (raw <= high)
        kept = raw if preset.level == "token" else torch.ones_like(raw)
        weights = torch.where(inside, kept, 0.0)
        truncated, masked = torch.zeros_like(valid), valid & ~inside
    weights = torch.where(valid, weights, 0.0)

    # One device-to-host copy for the scalars, not one per metric (this runs for every micro-batch).
    values = [kl_k3, truncated.sum() / n_valid, masked.sum() / n_valid]
    kept_weights = weights[valid]
    if kept_weights.numel():
        values += list(torch.quantile(kept_weights, torch.tensor([0.1, 0.5, 0.9], dtype=kept_weights.dtype,
                                                                 device=kept_weights.device)))
    names = ["kl_k3", "truncated_frac", "masked_frac", "weight_p10", "weight_p50", "weight_p90"]
    return weights, dict(zip(names, torch.stack(values).tolist()))
