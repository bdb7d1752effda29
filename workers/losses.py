"""The actor's loss for one micro-batch, weighted so that gradient accumulation is exact.

A mini-batch is cut into micro-batches by a token budget and spread over data-parallel ranks, while
`token-mean` means "mean over every valid token of the mini-batch". Each micro-batch's aggregated loss is
therefore scaled by (its denominator / the mini-batch's global denominator) x world size: FSDP averages
gradients over ranks, and the sum over micro-batches and ranks then equals the full-batch loss.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from r1ray.algos import aggregate_loss, kl_penalty
from r1ray.algos.loss_registry import get_policy_loss
from r1ray.algos.rollout_correction import CorrectionPreset, correction_weights
from r1ray.protocol import TrainBatch


@dataclass(frozen=True)
class LossSettings:
    """The algorithm knobs the loss needs, as explicit values (not a config object)."""

    clip_low: float
    clip_high: float
    dual_clip: float | None
    agg: str
    norm_len: int                 # Dr. GRPO constant: the response budget
    kl_kind: str
    kl_coef: float                # 0 when KL is off or placed in the reward
    entropy_coef: float
    policy_loss: str = "clipped"  # a POLICY_LOSSES name or "package.module:function"
    correction: CorrectionPreset | None = None   # rollout correction (None: weights 1, metrics still logged)


def denominator(mask: Tensor, agg: str) -> float:
    """What `agg` divides by: valid tokens for token-mean, sequences with a valid token otherwise."""
    if agg == "token-mean":
        return float(mask.sum())
    return float((mask.sum(-1) > 0).sum())


class ActorLoss:
    """Callable LossFn for one mini-batch whose global denominator is already known.

    The policy term is `algorithm.policy_loss`'s function from the registry, its per-token losses weighted
    by the rollout correction between the old logprobs (on-policy: this update's first and only forward)
    and the engine's (`rollout_corr/*` metrics, r1ray/algos/rollout_correction.py). It also reports
    `rollout/logprob_gap`, the mean |old - sampler| logprob of the response tokens: kernels, precision and
    sampling settings make the two drift a little; a large gap means a weight sync that did not land (or,
    asynchronous, weights several versions old). The update's own steps never enter either.
    """

    def __init__(self, settings: LossSettings, global_denominator: float, world_size: int):
        self.s = settings
        self.policy_loss = get_policy_loss(settings.policy_loss)
        self.global_denominator = max(global_denominator, 1.0)
        self.world_size = world_size

    @property
    def entropy_grad(self) -> bool:
        """Whether the loss differentiates the entropy (read by the engine, which otherwise computes it
        without gradients, as a metric only)."""
        return self.s.entropy_coef > 0

    def __call__(self, micro: TrainBatch, logprobs: Tensor, entropy: Tensor | None) -> tuple[Tensor, dict[str, float]]:
        s = self.s
        device = logprobs.device
        mask = micro.response_mask.to(device)
        old = micro.old_logprobs.to(device) if micro.old_logprobs is not None else logprobs.detach()
        out: dict[str, float] = {}
        weights = None
        if micro.rollout_logprobs is not None:
            sampler = micro.rollout_logprobs.to(device)
            weights, corr = correction_weights(old, sampler, mask, s.correction)
            out.update({"rollout_corr/" + k: v for k, v in corr.items()})
            gap = (old - sampler).abs()
            out["rollout/logprob_gap"] = float((gap * mask).sum() / mask.sum().clamp(min=1))
        loss, metrics = self.policy_loss(logprobs, old, micro.advantages.to(device), mask, clip_low=s.clip_low,
                                         clip_high=s.clip_high, agg=s.agg, dual_clip=s.dual_clip, norm_len=s.norm_len,
                                         weights=weights)
        out.update({"actor/" + k: v for k, v in metrics.items()})
        if micro.ref_logprobs is not None:
            kl = aggregate_loss(kl_penalty(logprobs, micro.ref_logprobs.to(device), s.kl_kind), mask, s.agg,
                                norm_len=s.norm_len)
            out["actor/kl"] = float(kl.detach())
            if s.kl_coef > 0:
                loss = loss + s.kl_coef * kl
        if entropy is not None:
            ent = aggregate_loss(entropy, mask, s.agg, norm_len=s.norm_len)
            out["actor/entropy"] = float(ent.detach())
            if s.entropy_coef > 0:
                loss = loss - s.entropy_coef * ent
        weight = denominator(mask, s.agg) / self.global_denominator * self.world_size
        return loss * weight, out


class SFTLoss:
    """Token-mean negative log-likelihood of the response tokens over the whole mini-batch (LossFn)."""

    def __init__(self, global_tokens: float, world_size: int):
        self.global_tokens = max(global_tokens, 1.0)
        self.world_size = world_size
        self.entropy_grad = False          # entropy is a metric here, never a loss term

    def __call__(self, micro: TrainBatch, logprobs: Tensor, entropy: Tensor | None) -> tuple[Tensor, dict[str, float]]:
        mask = micro.response_mask.to(logprobs.device)
        nll_sum = -(logprobs * mask).sum()
        tokens = float(mask.sum())
        metrics = {"sft/nll": float(nll_sum.detach()) / max(tokens, 1.0)}
        if entropy is not None:
            metrics["actor/entropy"] = float((entropy.detach() * mask).sum()) / max(tokens, 1.0)
        return nll_sum / self.global_tokens * self.world_size, metrics
