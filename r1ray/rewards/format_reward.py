"""R1 format reward: the reasoning in ``<think>...</think>``, then ``<answer>...</answer>``.

DeepSeek-R1 (Guo et al. 2025, §2.2.2) pairs the accuracy reward with a format reward that checks
that the model puts its thinking between think tags. Here the layout must be exact: one think
block then one answer block, only whitespace around and between them, and neither block empty.

``extra["think_prefilled"]`` (bool, default False): the prompt itself ended with ``<think>`` (the
R1-Zero template "... Assistant: <think>"), so the response may start straight with the reasoning.
"""

from __future__ import annotations

from r1ray.rewards.base import reward_fn
from r1ray.rewards.extract import split_think_answer


@reward_fn
def format_reward(response: str, ground_truth: str, extra: dict) -> float:
    """1.0 if the response has the R1 think/answer layout, else 0.0; the ground truth is unused."""
    layout = split_think_answer(response, think_prefilled=bool(extra.get("think_prefilled")))
    return 0.0 if layout is None else 1.0
