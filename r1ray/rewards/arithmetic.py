"""Exact-integer reward for the generated arithmetic task.

The answer is the ``<answer>`` content, else the last ``\\boxed{}``; it must state one number, after the
last "=" if there is one ("= 42", "3 + 4 = 7", "42." and "42 apples" each give one). It is compared to the
ground truth as an integer, so "42.0" and "1,234" are fine and "42.5" is wrong. An answer with several
numbers ("3 or 5 or 7", "3/7") or several boxed answers scores 0 (:mod:`r1ray.rewards.hedge`): the last
number of "3 or 5 or 7" would earn the reward of a listed guess. A response without an answer tag or box
scores 0: as in R1, the answer must come in the specified format. (A bare-last-number fallback let a
policy learn to drop the answer tag and still collect the accuracy reward.)
"""

from __future__ import annotations

import logging
from decimal import Decimal, InvalidOperation
from typing import Optional

from r1ray.rewards.base import reward_fn
from r1ray.rewards.extract import extract_final_answer, gsm8k_ground_truth, numbers_in
from r1ray.rewards.hedge import hedged

logger = logging.getLogger(__name__)

# Longer digit strings are wrong answers, and Python refuses to convert them to int anyway.
MAX_DIGITS = 1000


def as_integer(text: str) -> Optional[int]:
    """The integer that ``text`` states: its one number after the last "=" (if any); None if there is no
    number or several, or it is non-integral or too long."""
    numbers = numbers_in(text.rpartition("=")[2])
    if len(numbers) != 1 or len(numbers[0]) > MAX_DIGITS:
        return None
    number = numbers[0]
    try:
        value = Decimal(number)
    except InvalidOperation:
        return None
    return int(value) if value == value.to_integral_value() else None


@reward_fn
def arithmetic_reward(response: str, ground_truth: str, extra: dict) -> Optional[float]:
    """1.0 if the answer equals the integer ground truth, else 0.0; None if the ground truth is not
    an integer."""
    target = as_integer(gsm8k_ground_truth(ground_truth))
    if target is None:
        logger.debug("arithmetic: ground truth is not an integer: %.80r", ground_truth)
        return None
    answer = extract_final_answer(response, number_fallback=False)
    if answer is None or as_integer(answer) != target:
        return 0.0
    return 0.0 if hedged(response, answer, ground_truth) else 1.0
