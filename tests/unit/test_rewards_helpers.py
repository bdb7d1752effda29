"""Test-only reward functions, imported by dotted path ("tests.unit.test_rewards_helpers:behave")
in the reward worker processes. This module holds no tests."""

from __future__ import annotations

import os
import time
from typing import Optional

from r1ray.rewards import RewardTimeout


def behave(response: str, ground_truth: str, extra: dict) -> Optional[float]:
    """Misbehave as the response says: "sleep" never returns, "raise" raises, "die" kills the
    worker process, "timeout" raises RewardTimeout, "none" is unscorable; anything else scores 1."""
    if response == "sleep":
        while True:
            time.sleep(60)
    if response == "raise":
        raise RuntimeError("boom")
    if response == "die":
        os._exit(3)
    if response == "timeout":
        raise RewardTimeout("internal limit")
    if response == "none":
        return None
    if response.startswith("spawn:"):
        # Leave sleeping children behind, then hang: killing only the worker would orphan them.
        pid_file = response.split(":", 1)[1]
        import subprocess

        children = [subprocess.Popen(["sleep", "300"]) for _ in range(5)]
        with open(pid_file, "w") as f:
            f.write(" ".join(str(c.pid) for c in children))
        while True:
            time.sleep(60)
    return 1.0
