"""STILL-3-style shaping rewards (Chen et al. 2025, "An Empirical Study on Eliciting and Improving
R1-like Reasoning Models"): a length reward and a reasoning-action reward.

Both are heuristics of r1ray's choosing in the spirit of that study, not a reproduction of its code;
they are opt-in (not in ``DEFAULT_REWARD_NAMES``) and meant to be given small weights.

``still3_length``: with ``r = min(length / max_length, 1)``, the score is ``+LENGTH_SCALE * r`` for
a correct response and ``-LENGTH_SCALE * r`` for a wrong one, so longer reasoning is encouraged
only when it pays off. ``length`` is ``extra["response_length"]`` (tokens) when the caller knows it,
else ``len(response) / CHARS_PER_TOKEN``; ``max_length`` is ``extra["max_response_length"]``
(default 1024). Correctness is ``extra["correct"]`` when given, else the ``math`` reward.

``still3_action``: ``ACTION_BONUS`` per reflection/verification phrase ("wait", "verify",
"check", ...) in the reasoning, capped at ``ACTION_CAP``.
"""

from __future__ import annotations

import re
from typing import Optional

from r1ray.rewards.base import reward_fn
from r1ray.rewards.extract import reasoning_text
from r1ray.rewards.math_reward import math_correct

LENGTH_SCALE = 0.5
DEFAULT_MAX_RESPONSE_LENGTH = 1024
# A rough average for English and LaTeX with BPE tokenizers; only used when no token count is given.
CHARS_PER_TOKEN = 4.0

ACTION_BONUS = 0.02
ACTION_CAP = 0.1
REFLECTION_WORDS = (
    "wait",
    "verify",
    "verifying",
    "verification",
    "check",
    "checking",
    "double-check",
    "re-check",
    "recheck",
    "re-examine",
    "reconsider",
    "alternatively",
    "let me make sure",
)
_REFLECTION_RE = re.compile(
    r"\b(?:" + "|".join(re.escape(word) for word in REFLECTION_WORDS) + r")\b", re.IGNORECASE
)


def count_reflection_words(text: str, limit: Optional[int] = None) -> int:
    """Number of reflection/verification phrases in ``text``, stopping early at ``limit``."""
    count = 0
    for _ in _REFLECTION_RE.finditer(text):
        count += 1
        if limit is not None and count >= limit:
            break
    return count


def _response_length(response: str, extra: dict) -> float:
    if extra.get("response_length") is not None:
        return float(extra["response_length"])
    return len(response) / CHARS_PER_TOKEN


@reward_fn
def still3_length_reward(response: str, ground_truth: str, extra: dict) -> Optional[float]:
    """``±LENGTH_SCALE * min(length / max_length, 1)`` by correctness; None if correctness is
    unknown (no ``extra["correct"]`` and an unparseable math ground truth)."""
    correct = extra.get("correct")
    if correct is None:
        correct = math_correct(response, ground_truth)
    if correct is None:
        return None
    max_length = float(extra.get("max_response_length") or DEFAULT_MAX_RESPONSE_LENGTH)
    ratio = min(max(_response_length(response, extra) / max_length, 0.0), 1.0)
    return LENGTH_SCALE * ratio if correct else -LENGTH_SCALE * ratio


@reward_fn
def still3_action_reward(response: str, ground_truth: str, extra: dict) -> float:
    """``min(ACTION_CAP, ACTION_BONUS * n)`` for n reflection phrases in the reasoning."""
    limit = round(ACTION_CAP / ACTION_BONUS)
    return min(ACTION_CAP, ACTION_BONUS * count_reflection_words(reasoning_text(response), limit))
