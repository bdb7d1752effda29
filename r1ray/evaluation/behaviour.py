"""Reasoning-behaviour metrics: how often responses reflect, verify and correct themselves.

The DeepSeek-R1 report (Guo et al. 2025, §2.2.4) describes the "aha moment" of R1-Zero, where the
model learns to stop and re-evaluate ("Wait, wait. Wait. That's an aha moment..."); STILL-3
(Chen et al. 2025) tracks reflection words such as "wait" and "verify" during RL; and Gandhi et al.
2025 ("Cognitive Behaviors that Enable Self-Improving Reasoners") name verification, backtracking,
subgoal setting and backward chaining as the behaviours that make RL work. Word counts are the cheap
proxy these reports log; this module computes them per category.

Matching rule: a listed word matches at the start of a word, case-insensitively, and covers the
rest of that word, so "check" counts "checking", "checked" and "double-check" (the hyphen starts a
word) but not "paycheck"; "verify" counts "verifying" but not "verification"; "correct" does not
count "incorrect". Alternatives are tried longest first and matches do not overlap, so
"double-check" is one occurrence, not two. The stem rule also counts "correctly" and
"checkpoint": these are rates to compare across training steps, not annotations of single
responses.

Why not :func:`r1ray.rewards.still3.count_reflection_words`: it counts one fixed list that mixes
reflection and verification (the input of a shaping reward), matches whole words only (missing
"rethinking", "checked") and cannot be given other words; changing it would change that reward.
"""

from __future__ import annotations

import functools
import re
from typing import Mapping, Sequence

DEFAULT_BEHAVIOUR_WORDS: dict[str, list[str]] = {
    "reflection": ["wait", "however", "reflect", "re-examine", "rethink"],
    "verification": ["verify", "check", "confirm", "double-check"],
    "correction": ["correct", "revise", "adjust", "mistake"],
}


@functools.lru_cache(maxsize=64)
def _stem_pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    """One regex per category: any listed stem at a word start, plus the rest of that word."""
    stems = sorted({word.lower() for word in words}, key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(re.escape(stem) for stem in stems) + r")\w*", re.IGNORECASE)


def count_behaviour_words(text: str, words: Sequence[str]) -> int:
    """Occurrences in ``text`` of the stems ``words`` (matching rule in the module docstring)."""
    return sum(1 for _ in _stem_pattern(tuple(words)).finditer(text))


def behaviour_rates(
    texts: Sequence[str], words: Mapping[str, Sequence[str]] = DEFAULT_BEHAVIOUR_WORDS
) -> dict[str, float]:
    """Per category ``name`` of ``words``: ``behaviour/{name}_rate``, the fraction of texts with at
    least one occurrence, and ``behaviour/{name}_per_1k_words``, occurrences per 1000
    whitespace-separated words over all texts together (so short responses do not dominate).

    Pass ``reasoning_text(response)`` (:mod:`r1ray.rewards.extract`) to count only the
    ``<think>`` section. An empty ``texts`` gives an empty dict: no responses is not a rate of 0.

    Raises:
        ValueError: a category with no words.
    """
    for name, stems in words.items():
        if not stems:
            raise ValueError(f"behaviour_rates: category {name!r} has no words")
    if not texts:
        return {}
    total_words = sum(len(text.split()) for text in texts)
    metrics: dict[str, float] = {}
    for name, stems in words.items():
        counts = [count_behaviour_words(text, stems) for text in texts]
        metrics[f"behaviour/{name}_rate"] = sum(1 for count in counts if count) / len(texts)
        metrics[f"behaviour/{name}_per_1k_words"] = 1000.0 * sum(counts) / total_words if total_words else 0.0
    return metrics
