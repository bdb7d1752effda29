"""A reward for tests of group filtering, imported by the reward subprocesses as
`tests.ray.spread_reward:spread_on_even_answers` (Ray puts the driver's working directory, the repository
root under pytest, on the workers' path): groups whose answer is even get scores that differ between
samples, groups whose answer is odd all score 0, so dynamic sampling must drop exactly the odd ones."""

from __future__ import annotations

import zlib


def spread_on_even_answers(response: str, ground_truth: str, extra: dict) -> float:
    if int(ground_truth) % 2:
        return 0.0
    return (zlib.crc32(response.encode()) % 1000) / 1000
