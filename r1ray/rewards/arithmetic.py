"""Exact-integer reward for the generated arithmetic task.

The answer is the ``<answer>`` content, else the last ``\\boxed{}``; inside it, the last number counts
("= 42" and "42." both give 42). It is compared to the ground truth as an integer, so "42.0" and
"1,234" are fine and "42.5" is wrong. A response without an answer tag or box scores 0: as in R1, the
answer must come in the specified format. (A bare-last-number fallback let a policy learn to drop the
answer tag and still collect the accuracy reward.)
"""

from __future__ import annotations

import logging
from decimal import Decimal, InvalidOperation
from typing import Optional

from r1ray.rewards.base import reward_fn
from r1ray.rewards.extract import extract_final_answer, gsm8k_ground_truth, last_number

logger = logging.getLogger(__name__)

# Longer digit strings are wrong answers, and Python refuses to convert them to int anyway.
MAX_DIGITS = 1000


def as_integer(text: str) -> Optional[int]:
    """The integer that is the last number of ``text``; None if none, non-integral or too long."""
    number = last_number(text)
    if number is None or len(number) > MAX_DIGITS:
        return None
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
    if answer is None:
        return 0.0
    return 1.0 if as_integer(answer) == target else 0.0
