"""SimpleRL reward (Zeng et al. 2025, SimpleRL-Zoo / simpleRL-reason code release).

+1 if the final answer is correct, -0.5 if the response gives an answer (an ``<answer>`` block or a
``\\boxed{}``) that is wrong or offers several candidates, -1 if it gives no answer at all. Unlike ``math``
there is no last-number fallback: a bare number in the text is not a committed answer.
"""

from __future__ import annotations

import logging
from typing import Optional

from r1ray.rewards.base import reward_fn
from r1ray.rewards.extract import extract_final_answer
from r1ray.rewards.hedge import hedged
from r1ray.rewards.math_reward import answer_matches, parse_gold

logger = logging.getLogger(__name__)

CORRECT, WRONG, NO_ANSWER = 1.0, -0.5, -1.0


@reward_fn
def simplerl_reward(response: str, ground_truth: str, extra: dict) -> Optional[float]:
    """1.0 correct, -0.5 wrong answer, -1.0 no answer; None if the ground truth is unparseable."""
    gold = parse_gold(ground_truth)
    if gold is None:
        logger.debug("simplerl: unparseable ground truth %.80r", ground_truth)
        return None
    answer = extract_final_answer(response, number_fallback=False)
    if answer is None:
        return NO_ANSWER
    return CORRECT if answer_matches(answer, gold) and not hedged(response, answer, ground_truth) else WRONG
