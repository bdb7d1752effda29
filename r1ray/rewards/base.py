"""Shared types and the never-raise wrapper for reward functions.

A reward function scores one sampled response:

    fn(response: str, ground_truth: str, extra: dict) -> float | None

It returns a float, or None when the sample cannot be scored (for example an unparseable ground
truth). "Unscorable" is not "wrong" (docs/design.md §6): callers keep None samples out of baselines
instead of treating them as 0.

The one exception a reward function may raise is :class:`RewardTimeout`, raised when a time limit
inside the function fires (math-verify's ``signal.alarm``). It is let through on purpose so the
executor can count the sample as a timeout instead of hiding it as unscorable or as 0.

A return value that is neither a number nor None (a str, even "1.0"; a list), or that is NaN or
infinite, is a bug in the function, not a property of the sample: :func:`as_score` raises for it, so
the executor counts the sample as an error naming the function and the value, never as a score.
A bool is a number in Python and is accepted as 1.0 / 0.0.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Callable, Optional

logger = logging.getLogger(__name__)

RewardFn = Callable[[str, str, dict], Optional[float]]


class RewardTimeout(Exception):
    """An internal time limit of a reward function fired; the sample is counted as a timeout."""


def as_score(value: Any) -> Optional[float]:
    """``value`` as a finite float, or None; TypeError / ValueError showing the value otherwise (the
    executor puts the function's name in front of the message).

    Anything with ``__float__`` counts as a number (int, bool, numpy scalars, a one-element tensor);
    a str does not, although ``float("1.0")`` would convert it: text returned as a score is a bug.
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(type(value), "__float__"):
        raise TypeError(
            f"returned {value!r:.80} ({type(value).__name__}); a reward function must return a "
            "number or None"
        )
    score = float(value)
    if not math.isfinite(score):
        raise ValueError(f"returned {score}; a reward function must return a finite number or None")
    return score


def checked(fn: Callable[..., Any]) -> RewardFn:
    """``fn`` with its return value checked by :func:`as_score` (for user-supplied functions)."""

    @functools.wraps(fn)
    def wrapper(response: Any, ground_truth: Any, extra: Any = None) -> Optional[float]:
        return as_score(fn(response, ground_truth, extra))

    return wrapper


def reward_fn(fn: Callable[[str, str, dict], Optional[float]]) -> RewardFn:
    """Wrap a reward function so that it never raises (except :class:`RewardTimeout`, and a return
    value of the wrong type: see below).

    Inputs are coerced first (``None`` extra becomes ``{}``; non-string response or ground truth
    makes the sample unscorable) so every function body can assume well-typed arguments. Any other
    exception is logged at debug level and turned into None: a bug or a garbage input must not
    crash a training step, and must not be mistaken for a wrong answer either. The return value is
    checked by :func:`as_score`, outside that net: a wrong type is the function's bug, and raises.
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
        return as_score(score)

    return wrapper
