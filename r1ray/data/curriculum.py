"""Curriculum over difficulty levels: draw prompts from the current level, move up on a schedule or once the
policy's training accuracy passes a threshold (Logic-RL raised the number of people in Knights-and-Knaves
this way; Kimi 1.5 sampled from easy to hard). One level is plain epoch-shuffled sampling.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Sequence

from r1ray.data.dataset import PromptDataset, PromptItem, PromptSampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurriculumRule:
    advance_at_steps: tuple[int, ...] = ()   # level i+1 starts at step advance_at_steps[i] (1-based steps)
    advance_at_accuracy: float = 0.0         # also move up once mean accuracy over `window` steps >= this; 0: off
    window: int = 5


class CurriculumSource:
    """Prompts for each step, from the current difficulty level; its state resumes exactly."""

    def __init__(self, levels: Sequence[PromptDataset], batch_size: int, *, seed: int, shuffle: bool,
                 rule: CurriculumRule = CurriculumRule()):
        self.levels = list(levels)
        self.samplers = [PromptSampler(len(d), batch_size, seed=seed + i, shuffle=shuffle)
                         for i, d in enumerate(self.levels)]
        self.rule = rule
        self.level = 0
        self.recent: deque[float] = deque(maxlen=rule.window)

    def next_batch(self) -> list[PromptItem]:
        return self.levels[self.level].batch(self.samplers[self.level].next_batch())

    def observe(self, step: int, accuracy: float) -> None:
        """Record the step's training accuracy and move up a level when the rule says so."""
        self.recent.append(accuracy)
        if self.level + 1 >= len(self.levels):
            return
        scheduled = self.level < len(self.rule.advance_at_steps) and step + 1 >= self.rule.advance_at_steps[self.level]
        mastered = (self.rule.advance_at_accuracy > 0 and len(self.recent) == self.rule.window
                    and sum(self.recent) / len(self.recent) >= self.rule.advance_at_accuracy)
        if scheduled or mastered:
            self.level += 1
            self.recent.clear()
            logger.info("curriculum: level %d from step %d (%s)", self.level, step + 1,
                        "schedule" if scheduled else f"accuracy >= {self.rule.advance_at_accuracy}")

    def metrics(self) -> dict[str, float]:
        return {"curriculum/level": float(self.level)}

    def state_dict(self) -> dict[str, Any]:
        return {"level": self.level, "recent": list(self.recent), "samplers": [s.state_dict() for s in self.samplers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "samplers" not in state:  # a single-sampler state from a run without curriculum
            state = {"level": 0, "recent": [], "samplers": [state]}
        self.level = int(state["level"])
        self.recent = deque(state["recent"], maxlen=self.rule.window)
        for sampler, s in zip(self.samplers, state["samplers"]):
            sampler.load_state_dict(s)
