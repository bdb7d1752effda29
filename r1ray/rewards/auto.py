"""Accuracy reward chosen per row by its ``data_source`` (verl's convention, docs/design.md §2).

``extra["data_source"]`` is looked up in :data:`DATA_SOURCE_REWARDS`, first as given, then
lower-cased, then by its last path component ("openai/gsm8k" -> "gsm8k"). An unknown data source
makes the sample unscorable (None), never wrong.
"""

from __future__ import annotations

import logging
from typing import Optional

from r1ray.rewards.arithmetic import arithmetic_reward
from r1ray.rewards.base import RewardFn, reward_fn
from r1ray.rewards.countdown import countdown_reward
from r1ray.rewards.knights_knaves import knights_knaves_reward
from r1ray.rewards.math_reward import math_reward

logger = logging.getLogger(__name__)

DATA_SOURCE_REWARDS: dict[str, RewardFn] = {
    "gsm8k": math_reward,
    "openai/gsm8k": math_reward,
    "math": math_reward,
    "math500": math_reward,
    "math-500": math_reward,
    "math_500": math_reward,
    "math-lighteval": math_reward,
    "lighteval/math": math_reward,
    "hendrycks_math": math_reward,
    "aime": math_reward,
    "aime24": math_reward,
    "aime25": math_reward,
    "amc": math_reward,
    "amc23": math_reward,
    "countdown": countdown_reward,
    "knights_knaves": knights_knaves_reward,
    "kk": knights_knaves_reward,
    "kk_logic": knights_knaves_reward,
    "arithmetic": arithmetic_reward,
}


def reward_for_data_source(data_source: str) -> Optional[RewardFn]:
    """The accuracy reward for a data source name, or None if it is unknown."""
    for key in (data_source, data_source.lower(), data_source.lower().rsplit("/", 1)[-1]):
        if key in DATA_SOURCE_REWARDS:
            return DATA_SOURCE_REWARDS[key]
    return None


@reward_fn
def auto_reward(response: str, ground_truth: str, extra: dict) -> Optional[float]:
    """The score of ``DATA_SOURCE_REWARDS[extra["data_source"]]``; None for an unknown source."""
    data_source = str(extra.get("data_source") or "")
    fn = reward_for_data_source(data_source)
    if fn is None:
        logger.debug("auto: no reward for data_source %r", data_source)
        return None
    return fn(response, ground_truth, extra)
