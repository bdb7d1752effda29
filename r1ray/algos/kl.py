"""KL regularisation towards the reference policy: per-token estimators and the coefficient schedule."""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from r1ray.algos.masking import compute_dtype

logger = logging.getLogger(__name__)

KL_PENALTIES: tuple[str, ...] = ("k1", "k2", "k3")
KL_SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine")

# exp(20) ~ 4.9e8 is far inside float32 range; past that bound the estimate carries no useful
# signal and would only overflow to inf and poison the gradient with NaN.
_LOG_RATIO_BOUND = 20.0
_K3_BOUND = 10.0


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str) -> Tensor:
    """Per-token sample estimate of KL(policy || reference), from tokens sampled by the policy.

    With ``x = ref_logprobs - logprobs`` (J. Schulman, "Approximating KL Divergence", 2020):

    - ``"k1"``: ``-x = logp - ref``; unbiased, high variance, can be negative.
    - ``"k2"``: ``0.5 * x**2``; biased, low variance, always >= 0.
    - ``"k3"``: ``exp(x) - x - 1``; unbiased and always >= 0, the estimator of the GRPO objective
      (DeepSeekMath, Shao et al. 2024, section 4.1.1). ``x`` is clamped to ``[-20, 20]`` and the result to
      ``[0, 10]`` so a token the reference finds impossible cannot overflow to inf: the lower bound
      only removes rounding noise, since k3 is non-negative by construction.

    Args:
        logprobs: ``(B, T)`` (any shape) log-probabilities of the sampled tokens under the policy.
        ref_logprobs: same shape, under the reference policy.
        kind: one of ``KL_PENALTIES``.

    Returns:
        Same shape and dtype as ``logprobs``; elementwise, not masked (reduce it with
        ``aggregate_loss`` or ``masked_mean``). Differentiable with respect to ``logprobs``.

    Raises:
        ValueError: for an unknown ``kind`` or mismatched shapes.
    """
    if kind not in KL_PENALTIES:
        raise ValueError(f"unknown KL penalty {kind!r}; valid kinds: {', '.join(KL_PENALTIES)}")
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} must have one shape"
        )
    dtype = compute_dtype(logprobs.dtype)
    log_ratio = ref_logprobs.to(dtype) - logprobs.to(dtype)
    if kind == "k1":
        kl = -log_ratio
    elif kind == "k2":
        kl = 0.5 * log_ratio.square()
    else:
        clamped = log_ratio.clamp(-_LOG_RATIO_BOUND, _LOG_RATIO_BOUND)
        # expm1 keeps full precision near 0, where exp(x) - 1 would cancel to rounding noise.
        kl = (torch.expm1(clamped) - clamped).clamp(0.0, _K3_BOUND)
    return kl.to(logprobs.dtype)


def kl_coef_schedule(kind: str, initial: float, final: float, step: int, total_steps: int) -> float:
    """The KL coefficient ``beta`` at a training step.

    - ``"constant"``: always ``initial``.
    - ``"linear"``: from ``initial`` at step 0 linearly to ``final`` at ``total_steps``, then ``final``.
    - ``"cosine"``: cosine annealing (Loshchilov & Hutter 2017, SGDR) from ``initial`` down to the floor
      ``final``; the STILL-3 report (Chen et al. 2025, "An Empirical Study on Eliciting and Improving
      R1-like Reasoning Models") found an annealed KL coefficient worked best.

    Args:
        kind: one of ``KL_SCHEDULES``.
        initial: coefficient at step 0.
        final: coefficient at ``total_steps`` and after.
        step: the current step; clamped to ``[0, total_steps]``.
        total_steps: length of the schedule; 0 means the schedule is already over (``final``, or
            ``initial`` for ``"constant"``).

    Returns:
        The coefficient, a python float.

    Raises:
        ValueError: for an unknown ``kind`` or a negative ``total_steps``.
    """
    if kind not in KL_SCHEDULES:
        raise ValueError(f"unknown KL coefficient schedule {kind!r}; valid kinds: {', '.join(KL_SCHEDULES)}")
    if total_steps < 0:
        raise ValueError(f"total_steps must be >= 0, got {total_steps}")
    if kind == "constant":
        return float(initial)
    progress = 1.0 if total_steps == 0 else min(max(step, 0), total_steps) / total_steps
    if kind == "linear":
        return float(initial + (final - initial) * progress)
    return float(final + (initial - final) * 0.5 * (1.0 + math.cos(math.pi * progress)))
