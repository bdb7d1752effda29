"""Pure tensor functions of GRPO-family RL: advantages, losses, KL and sample filtering.

Nothing here imports Ray or touches ``torch.distributed``; every function is tested on CPU against
hand-computed values in ``tests/unit/test_algos_*.py``.
"""

from r1ray.algos.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)
from r1ray.algos.filtering import dynamic_sampling_filter, overlong_loss_mask, overlong_reward_shaping
from r1ray.algos.kl import KL_PENALTIES, KL_SCHEDULES, kl_coef_schedule, kl_penalty
from r1ray.algos.masking import LOSS_AGGREGATIONS, aggregate_loss, masked_mean, masked_sum
from r1ray.algos.policy_loss import policy_loss

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_PENALTIES",
    "KL_SCHEDULES",
    "LOSS_AGGREGATIONS",
    "aggregate_loss",
    "compute_advantages",
    "dynamic_sampling_filter",
    "grpo_advantages",
    "kl_coef_schedule",
    "kl_penalty",
    "masked_mean",
    "masked_sum",
    "overlong_loss_mask",
    "overlong_reward_shaping",
    "policy_loss",
    "reinforce_pp_advantages",
    "rloo_advantages",
]
