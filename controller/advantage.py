"""From scored rollouts to a TrainBatch: reward shaping, group filtering and advantages (pure functions).

The controller owns this step because it needs the whole batch: group baselines span data-parallel ranks,
and dynamic sampling decides which groups train at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from r1ray.algos import (
    compute_advantages,
    dynamic_sampling_filter,
    kl_penalty,
    overlong_loss_mask,
    overlong_reward_shaping,
)
from r1ray.config import AlgorithmConfig
from r1ray.protocol import RolloutBatch, TrainBatch, select_rows


def scores_tensor(scores: list[float | None]) -> Tensor:
    """(B,) float32 with NaN for unscorable samples (kept out of baselines by the estimators)."""
    return torch.tensor([math.nan if s is None else float(s) for s in scores], dtype=torch.float32)


@dataclass
class GroupSelection:
    rows: list[int]               # rows kept for training, whole groups in order
    frac_zero_std: float          # share of groups whose rewards have no spread


def select_groups(scores: Tensor, group_size: int, *, dynamic_sampling: bool) -> GroupSelection:
    """DAPO dynamic sampling: keep the groups whose rewards differ (the step cuts what it kept from every
    round to whole units of ranks x mini-batches, `trainer.whole_units`).

    Without dynamic sampling every row is kept and only the zero-spread fraction is reported.
    """
    keep, frac = dynamic_sampling_filter(scores, group_size)
    if not dynamic_sampling:
        return GroupSelection(list(range(len(scores))), frac)
    groups = [g for g in range(len(scores) // group_size) if bool(keep[g * group_size])]
    return GroupSelection([g * group_size + i for g in groups for i in range(group_size)], frac)


def shaped_scores(scores: Tensor, rollout: RolloutBatch, algo: AlgorithmConfig, budget: int) -> Tensor:
    """Scores plus the DAPO soft overlong penalty when enabled; (B,)."""
    if not algo.overlong_shaping:
        return scores
    penalty = overlong_reward_shaping(rollout.response_lens, budget, algo.overlong_buffer_len, algo.overlong_penalty)
    return scores + penalty


def build_train_batch(rollout: RolloutBatch, scores: Tensor, algo: AlgorithmConfig, *, kl_coef: float) -> TrainBatch:
    """Advantages from (B,) (shaped) scores, broadcast over response tokens; the rest of the loss inputs
    (the rollout's reference and old logprobs) beside them.

    With `kl_placement: reward` the sequence's summed k-estimator KL (sampling policy vs reference) is
    subtracted from its score before the advantages, instead of entering the loss.
    """
    mask = rollout.response_mask()                                         # (B, R)
    ref_logprobs, old_logprobs = rollout.ref_logprobs, rollout.old_logprobs
    if algo.overlong_mask:
        mask = overlong_loss_mask(mask, rollout.truncated)
    if algo.kl_placement == "reward" and ref_logprobs is not None:
        kl = kl_penalty(rollout.rollout_logprobs, ref_logprobs, algo.kl_kind) * mask
        scores = scores - kl_coef * kl.sum(-1)
    # REINFORCE++ whitens over the batch's response tokens (as OpenRLHF and verl do): pass each row's count.
    advantages = compute_advantages(algo.adv_estimator, scores, rollout.group_size, token_counts=mask.sum(-1))  # (B,)
    return TrainBatch(
        tokens=rollout.tokens, cu_seqlens=rollout.cu_seqlens, prompt_lens=rollout.prompt_lens,
        response_mask=mask, advantages=advantages[:, None] * mask,
        old_logprobs=old_logprobs,
        ref_logprobs=ref_logprobs if algo.kl_placement == "loss" else None,
        rollout_logprobs=rollout.rollout_logprobs)


def logprob_view(rollout: RolloutBatch) -> TrainBatch:
    """The trajectory of a rollout as a TrainBatch, for logprob passes before advantages exist."""
    mask = rollout.response_mask()
    return TrainBatch(tokens=rollout.tokens, cu_seqlens=rollout.cu_seqlens, prompt_lens=rollout.prompt_lens,
                      response_mask=mask, advantages=torch.zeros_like(mask))


def keep_rows(rollout: RolloutBatch, rows: list[int]) -> RolloutBatch:
    return rollout if len(rows) == len(rollout) else select_rows(rollout, rows)
