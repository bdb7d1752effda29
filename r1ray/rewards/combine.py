"""Weighted combination of per-function reward scores."""

from __future__ import annotations

from typing import Mapping, Optional


def combine_scores(
    scores: Mapping[str, Optional[float]], weights: Mapping[str, float]
) -> Optional[float]:
    """Weighted sum ``sum_k weights[k] * scores[k]``, or None if any component is None.

    A None component means that reward function could not score the sample; summing the others
    would silently change the reward's scale for that sample alone. So the whole sample is
    unscorable (docs/design.md §6: unscorable is not wrong) and stays out of the group baselines.

    Raises:
        ValueError: ``scores`` and ``weights`` name different reward functions (a caller bug).
    """
    if set(scores) != set(weights):
        raise ValueError(
            f"scores {sorted(scores)} and weights {sorted(weights)} name different reward functions"
        )
    if any(score is None for score in scores.values()):
        return None
    return float(sum(weights[name] * score for name, score in scores.items()))
