"""Rewards for Trainer tests, imported by the reward subprocesses as `tests.ray.rewards_for_tests:<name>` (Ray
puts the driver's working directory, the repository root under pytest, on the workers' path)."""

from __future__ import annotations

import zlib


def spread_on_even_answers(response: str, ground_truth: str, extra: dict) -> float:
    """Groups whose answer is even get scores that differ between samples, groups whose answer is odd all
    score 0, so dynamic sampling must drop exactly the odd ones."""
    if int(ground_truth) % 2:
        return 0.0
    return (zlib.crc32(response.encode()) % 1000) / 1000


def always_raises(response: str, ground_truth: str, extra: dict) -> float:
    """A broken custom reward: every call raises."""
    raise KeyError("ground_truth_field")
