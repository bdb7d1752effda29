"""The verl row layout shared by all task generators."""

from __future__ import annotations

from typing import Any


def verl_row(
    question: str,
    ground_truth: str,
    *,
    data_source: str,
    ability: str,
    extra_info: dict[str, Any],
    chat: bool = True,
) -> dict[str, Any]:
    """One row in the verl layout; the prompt is a single user message unless ``chat`` is False."""
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": question}] if chat else question,
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": extra_info,
    }
