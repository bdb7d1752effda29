"""Shared types and the never-raise wrapper for reward functions.

A reward function scores one sampled response:

    fn(response: str, ground_truth: str, extra: dict) -> float | None

It returns a float, or None when the sample cannot be scored (for example an unparseable ground
truth). "Unscorable" is not "wrong" (DESIGN.md §9): callers keep None samples out of baselines
instead of treating them as 0.

The one exception a reward function may raise is :class:`RewardTimeout`, raised when a time limit
inside the function fires (math-verify's ``signal.alarm``). It is let through on purpose so the
executor can count the sample as a timeout instead of hiding it as unscorable or as 0.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Optional

logger = logging.getLogger(__name__)

RewardFn = Callable[[str, str, dict], Optional[float]]


class RewardTimeout(Exception):
    """An internal time limit of a reward function fired; the sample is counted as a timeout."""


def reward_fn(fn: Callable[[str, str, dict], Optional[float]]) -> RewardFn:
    """Wrap a reward function so that it never raises (except :class:`RewardTimeout`).

    Inputs are coerced first (``None`` extra becomes ``{}``; non-string response or ground truth
    makes the sample unscorable) so every function body can assume well-typed arguments. Any other
    exception is logged at debug level and turned into None: a bug or a garbage input must not
    crash a training step, and must not be mistaken for a wrong answer either.
    """

    @functools.wraps(fn)
    def wrapper(response: Any, ground_truth: Any, extra: Any = None) -> Optional[float]:
        if not isinstance(response, str) or not isinstance(ground_truth, str):
            logger.debug("%s: non-string response or ground truth, unscorable", fn.__name__)
            return None
        if not isinstance(extra, dict):
            extra = {}
        try:
            score = fn(response, ground_truth, extra)
        except RewardTimeout:
            raise
        except Exception:  # noqa: BLE001 - the contract is "never raise"; see docstring
            logger.debug("%s failed, sample unscorable", fn.__name__, exc_info=True)
            return None
        return None if score is None else float(score)

    return wrapper
