"""Masked reductions shared by every loss: the mean helper and the loss aggregations.

Shapes: ``B`` sequences, ``T`` response tokens. A mask is ``(B, T)``, bool or numeric; any
non-zero entry marks a valid token. Reductions select with ``torch.where`` instead of
multiplying by the mask, so NaN or inf in padded positions never reaches the result or its
gradient.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

LOSS_AGGREGATIONS: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to compute in: float64 stays float64, everything else (bf16, fp16, ints) is float32.

    Reductions in bf16 lose about three significant digits, so they are carried out in float32
    and cast back to the input dtype at the end.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def output_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to return: the input's if it is floating point, otherwise float32."""
    return dtype if dtype.is_floating_point else torch.float32


def as_bool_mask(mask: Tensor) -> Tensor:
    """Returns ``mask`` as a bool tensor of the same shape (non-zero entries are valid)."""
    return mask if mask.dtype == torch.bool else mask != 0


def _check_same_shape(x: Tensor, mask: Tensor, what: str) -> None:
    if x.shape != mask.shape:
        raise ValueError(f"{what}: values of shape {tuple(x.shape)} and mask of shape {tuple(mask.shape)} must match")


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over the valid entries of ``mask``, in ``compute_dtype(x.dtype)``.

    Args:
        x: any shape, floating point.
        mask: same shape as ``x``; non-zero marks a valid entry.
        dim: reduce this dimension only; ``None`` reduces everything to a scalar.

    Returns:
        The sum, shape ``()`` for ``dim=None`` or ``x.shape`` without ``dim``; 0 where no entry is valid.
    """
    _check_same_shape(x, mask, "masked_sum")
    selected = torch.where(as_bool_mask(mask), x.to(compute_dtype(x.dtype)), 0.0)
    return selected.sum() if dim is None else selected.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the valid entries of ``mask``; safe on empty masks.

    Args:
        x: any shape, floating point.
        mask: same shape as ``x``; non-zero marks a valid entry.
        dim: reduce this dimension only; ``None`` reduces everything to a scalar.

    Returns:
        Shape ``()`` for ``dim=None`` or ``x.shape`` without ``dim``, in ``x.dtype``. Where nothing is
        valid the mean is 0 (not NaN), and the gradient there is 0, so an empty micro-batch is harmless.
    """
    total = masked_sum(x, mask, dim)
    valid = as_bool_mask(mask)
    count = valid.sum() if dim is None else valid.sum(dim=dim)
    return (total / count.clamp(min=1).to(total.dtype)).to(output_dtype(x.dtype))


def aggregate_loss(loss_mat: Tensor, mask: Tensor, agg: str, *, norm_len: int | None = None) -> Tensor:
    """Reduces a per-token loss matrix to the scalar that is back-propagated.

    Args:
        loss_mat: ``(B, T)`` per-token loss.
        mask: ``(B, T)``; non-zero marks a valid response token.
        agg: one of ``LOSS_AGGREGATIONS``:

            - ``"token-mean"``: sum over all valid tokens / number of valid tokens in the batch, so every
              token weighs the same however long its sequence (DAPO, Yu et al. 2025, token-level loss).
            - ``"seq-mean-token-mean"``: mean over each sequence's valid tokens, then mean over the
              sequences that have at least one valid token (the original GRPO objective, Shao et al. 2024).
            - ``"seq-mean-token-sum-norm"``: each sequence's token sum divided by the constant
              ``norm_len``, then mean over the sequences with at least one valid token; a constant
              divisor removes GRPO's length bias (Dr. GRPO, Liu et al. 2025).
        norm_len: the constant divisor of ``"seq-mean-token-sum-norm"``; default ``T``. Pass the
            configured maximum response length so the loss does not depend on how much padding a batch has.

    Returns:
        Scalar, in ``loss_mat.dtype``. Rows without a valid token contribute nothing (sequences removed by
        overlong filtering do not dilute the mean); an all-empty mask gives 0 with a defined (zero) gradient.
    """
    _check_same_shape(loss_mat, mask, "aggregate_loss")
    if loss_mat.dim() != 2:
        raise ValueError(f"aggregate_loss expects a (B, T) loss matrix, got shape {tuple(loss_mat.shape)}")
    if agg == "token-mean":
        return masked_mean(loss_mat, mask)
    if agg not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss aggregation {agg!r}; valid names: {', '.join(LOSS_AGGREGATIONS)}")
    valid = as_bool_mask(mask)
    row_sums = masked_sum(loss_mat, valid, dim=-1)
    row_counts = valid.sum(dim=-1)
    if agg == "seq-mean-token-mean":
        row_losses = row_sums / row_counts.clamp(min=1).to(row_sums.dtype)
    else:
        divisor = max(loss_mat.shape[-1], 1) if norm_len is None else norm_len
        if divisor <= 0:
            raise ValueError(f"norm_len must be a positive token count, got {divisor}")
        row_losses = row_sums / divisor
    nonempty_rows = row_counts > 0
    return masked_mean(row_losses, nonempty_rows).to(output_dtype(loss_mat.dtype))
