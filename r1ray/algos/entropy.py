"""Per-token entropy of the policy, logged to watch for entropy collapse and usable as a bonus."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from r1ray.algos.masking import as_bool_mask, compute_dtype

logger = logging.getLogger(__name__)


def masked_entropy(logits: Tensor, mask: Tensor) -> Tensor:
    """Entropy ``H_t = -sum_v p_v log p_v`` of the next-token distribution at every valid position.

    Computed from ``log_softmax`` (a logsumexp under the hood), so large logits cannot overflow.
    Logits of ``-inf`` (tokens banned from the vocabulary) contribute 0, with a finite gradient. DAPO
    (Yu et al. 2025) tracks this quantity to detect entropy collapse.

    Args:
        logits: ``(B, T, V)`` unnormalised scores; finite at padded positions (model outputs are),
            because the result there is discarded but still differentiated through.
        mask: ``(B, T)``; non-zero marks a valid response token.

    Returns:
        ``(B, T)`` entropies in nats, in ``logits.dtype``, computed in float32 for half-precision
        logits; 0 at padded positions. Peak memory is about three float32 copies of ``logits``, so
        callers with a large vocabulary pass chunks of the sequence.
    """
    if logits.dim() < 1 or mask.shape != logits.shape[:-1]:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} must equal logits shape {tuple(logits.shape)} without the vocab axis"
        )
    dtype = compute_dtype(logits.dtype)
    log_probs = torch.log_softmax(logits.to(dtype), dim=-1)
    # -inf * 0 is NaN; clamping -inf to the most negative finite value makes p * log p exactly 0
    # there and keeps the backward pass finite, unlike masking the product after the fact.
    finite_log_probs = log_probs.clamp(min=torch.finfo(dtype).min)
    entropy = -(log_probs.exp() * finite_log_probs).sum(dim=-1)
    return torch.where(as_bool_mask(mask), entropy, 0.0).to(logits.dtype)
