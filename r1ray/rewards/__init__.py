"""Rule-based rewards for reasoning RL, and a killable process pool to compute them.

Reward functions have the signature ``fn(response, ground_truth, extra) -> float | None`` (None:
the sample cannot be scored, which is not the same as wrong). Shipped functions, by name: see
:func:`reward_names`; ``"package.module:function"`` plugs in your own. Scores are computed in worker
processes by :class:`RewardExecutor`, which kills samples that run too long and counts timeouts
and errors instead of scoring them 0 (docs/design.md §6).
"""

from r1ray.rewards.auto import DATA_SOURCE_REWARDS
from r1ray.rewards.base import RewardFn, RewardTimeout
from r1ray.rewards.combine import combine_scores
from r1ray.rewards.executor import RewardExecutor, score_one
from r1ray.rewards.registry import (
    DEFAULT_REWARD_NAMES,
    REWARD_FUNCTIONS,
    get_reward_fn,
    reward_names,
)
from r1ray.rewards.spec import RewardItem, RewardSpec, ScoreBatch, ScoreResult
from r1ray.rewards.still3 import count_reflection_words
from r1ray.rewards.worker import score_item

__all__ = [
    "DATA_SOURCE_REWARDS",
    "DEFAULT_REWARD_NAMES",
    "REWARD_FUNCTIONS",
    "RewardExecutor",
    "RewardFn",
    "RewardItem",
    "RewardSpec",
    "RewardTimeout",
    "ScoreBatch",
    "ScoreResult",
    "combine_scores",
    "count_reflection_words",
    "get_reward_fn",
    "reward_names",
    "score_item",
    "score_one",
]
