"""Outcome advantage estimators of the GRPO family: one scalar advantage per sampled response.

Layout shared by every function here: ``rewards`` is ``(N,)`` with ``N = P * group_size``, ordered
group by group, so ``rewards[p * G:(p + 1) * G]`` are the ``G = group_size`` samples of prompt ``p``.

Unscorable samples (the reward function crashed or timed out) carry a non-finite reward, normally
NaN. "Unscorable" is not "wrong": they are left out of every baseline and normaliser and get
advantage 0, and a group with fewer than two scorable samples has no baseline at all, so the whole
group gets 0. Outputs never contain NaN.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from r1ray.algos.groups import group_stats
from r1ray.algos.masking import output_dtype

logger = logging.getLogger(__name__)

ADVANTAGE_ESTIMATORS: tuple[str, ...] = ("grpo", "drgrpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")


def grpo_advantages(rewards: Tensor, group_size: int, *, normalize_std: bool = True, eps: float = 1e-6) -> Tensor:
    """Group-relative advantages of GRPO (DeepSeekMath, Shao et al. 2024, section 4.1.2).

    ``A_i = (r_i - mean(group)) / (std(group) + eps)``. The std is the sample (unbiased) standard
    deviation, dividing by ``k - 1`` for ``k`` valid members, as ``torch.std`` and verl compute it. With
    ``normalize_std=False`` the advantage is ``r_i - mean(group)``: Dr. GRPO (Liu et al. 2025) drops the
    std division because it up-weights prompts that are too easy or too hard.

    Args:
        rewards: ``(N,)`` scalar rewards, group by group; NaN marks an unscorable sample.
        group_size: ``G``, samples per prompt; must divide ``N``.
        normalize_std: divide by the group std (GRPO) or not (Dr. GRPO).
        eps: added to the std so a near-constant group cannot blow up.

    Returns:
        ``(N,)`` advantages in ``rewards.dtype`` (float32 for integer rewards). Groups whose valid
        rewards are all equal, groups with fewer than 2 valid samples, and unscorable samples get 0.
    """
    stats = group_stats(rewards, group_size)
    advantages = stats.centred / (stats.std + eps) if normalize_std else stats.centred
    advantages = torch.where(stats.valid & stats.usable, advantages, 0.0)
    return advantages.reshape(-1).to(output_dtype(rewards.dtype))


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out advantages (Ahmadian et al. 2024, "Back to Basics").

    ``A_i = r_i - mean_{j != i} r_j``, the baseline being the mean of the *other* valid members of the
    group, which keeps the estimator unbiased. Equals ``k / (k - 1) * (r_i - mean(group))`` for ``k``
    valid members.

    Args:
        rewards: ``(N,)`` scalar rewards, group by group; NaN marks an unscorable sample.
        group_size: ``G``, samples per prompt; must divide ``N``.

    Returns:
        ``(N,)`` advantages in ``rewards.dtype`` (float32 for integer rewards); 0 for unscorable samples,
        groups with fewer than 2 valid samples and groups whose valid rewards are all equal.
    """
    stats = group_stats(rewards, group_size)
    others_mean = (stats.filled.sum(dim=-1, keepdim=True) - stats.filled) / (stats.count - 1).clamp(min=1)
    advantages = torch.where(stats.valid & stats.usable, stats.filled - others_mean, 0.0)
    return advantages.reshape(-1).to(output_dtype(rewards.dtype))


def reinforce_pp_advantages(
    rewards: Tensor, group_size: int, *, subtract_group_mean: bool, eps: float = 1e-6,
    token_counts: Tensor | None = None,
) -> Tensor:
    """REINFORCE++ advantages (Hu 2025, "REINFORCE++"): normalised over the whole batch.

    Without a group baseline: ``A_i = (r_i - mean) / (std + eps)``. With ``subtract_group_mean=True``
    ("REINFORCE++-baseline") each reward first has its group mean removed, then the centred values are
    normalised. Normalising by the batch rather than the group std is what keeps the estimator stable on
    prompts with tiny group spread. The std is the unbiased (Bessel-corrected) standard deviation.

    With ``token_counts`` the mean and std are over tokens, as OpenRLHF and verl whiten REINFORCE++ returns
    over the response tokens of the batch: sequence i counts ``token_counts[i]`` times, so long responses
    weigh more in the statistics. Without it every sequence counts once.

    Args:
        rewards: ``(N,)`` scalar rewards, group by group; NaN marks an unscorable sample.
        group_size: ``G``, samples per prompt; must divide ``N``.
        subtract_group_mean: subtract the group mean before the batch normalisation.
        eps: added to the batch std.
        token_counts: ``(N,)`` response tokens of each sample (the loss mask's row sums), or None.

    Returns:
        ``(N,)`` advantages in ``rewards.dtype`` (float32 for integer rewards). Unscorable samples (and,
        with ``token_counts``, samples with no token) get 0 and are left out of the batch statistics; with
        the group baseline, so are the members of groups with fewer than 2 valid samples. A batch with no
        spread gives all zeros.
    """
    stats = group_stats(rewards, group_size)
    if subtract_group_mean:
        has_baseline = stats.valid & (stats.count >= 2)
        # Equal-reward groups are exactly 0 after centring; forcing it removes one-ulp noise.
        centred = torch.where(stats.usable, stats.centred, 0.0)
        values = torch.where(has_baseline, centred, torch.nan)
    else:
        values = torch.where(stats.valid, stats.filled, torch.nan)
    flat = values.reshape(-1)
    weights = torch.ones_like(flat) if token_counts is None else token_counts.to(flat.dtype).reshape(-1)
    return _whiten(flat, weights, eps).to(output_dtype(rewards.dtype))


def _whiten(values: Tensor, weights: Tensor, eps: float) -> Tensor:
    """(values - mean) / (std + eps) with each value counted `weights` times (unbiased std); NaN values and
    zero weights are left out and get 0; no spread gives zeros."""
    valid = ~torch.isnan(values) & (weights > 0)
    w = torch.where(valid, weights, 0.0)
    x = torch.where(valid, values, 0.0)
    n = w.sum()
    if n <= 1:
        return torch.zeros_like(values)
    mean = (w * x).sum() / n
    var = (w * (x - mean) ** 2).sum() / (n - 1)
    if var <= 0:
        return torch.zeros_like(values)
    return torch.where(valid, (x - mean) / (var.sqrt() + eps), 0.0)


# (rewards, group size, eps, token counts or None) -> advantages; only REINFORCE++ reads the token counts.
_ESTIMATORS: dict[str, Callable[[Tensor, int, float, Tensor | None], Tensor]] = {
    "grpo": lambda r, g, eps, t: grpo_advantages(r, g, normalize_std=True, eps=eps),
    "drgrpo": lambda r, g, eps, t: grpo_advantages(r, g, normalize_std=False, eps=eps),
    "rloo": lambda r, g, eps, t: rloo_advantages(r, g),
    "reinforce_pp": lambda r, g, eps, t: reinforce_pp_advantages(r, g, subtract_group_mean=False, eps=eps,
                                                                 token_counts=t),
    "reinforce_pp_baseline": lambda r, g, eps, t: reinforce_pp_advantages(r, g, subtract_group_mean=True, eps=eps,
                                                                          token_counts=t),
}


def compute_advantages(estimator: str, rewards: Tensor, group_size: int, *, eps: float = 1e-6,
                       token_counts: Tensor | None = None) -> Tensor:
    """Dispatches to the advantage estimator named in the config.

    Args:
        estimator: one of ``ADVANTAGE_ESTIMATORS``: ``"grpo"``, ``"drgrpo"``, ``"rloo"``,
            ``"reinforce_pp"``, ``"reinforce_pp_baseline"``.
        rewards: ``(N,)`` scalar rewards, group by group; NaN marks an unscorable sample.
        group_size: ``G``, samples per prompt; must divide ``N``.
        eps: the std guard of the normalising estimators (unused by ``"rloo"``).
        token_counts: ``(N,)`` response tokens per sample; REINFORCE++ normalises over tokens with them.

    Returns:
        ``(N,)`` advantages, NaN-free.

    Raises:
        ValueError: for an unknown estimator name; the message lists the valid names.
    """
    if estimator not in _ESTIMATORS:
        raise ValueError(
            f"unknown advantage estimator {estimator!r}; valid names: {', '.join(ADVANTAGE_ESTIMATORS)}"
        )
    return _ESTIMATORS[estimator](rewards, group_size, eps, token_counts)
