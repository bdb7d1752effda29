"""Generation and scoring through the rollout and reward groups, shared by training, `eval` and `sample`."""

from __future__ import annotations


from r1ray.config import R1RayConfig
from r1ray.protocol import PromptBatch, RolloutBatch, SamplingParams
from r1ray.rewards import ScoreBatch
from r1ray.workers.group import WorkerGroup, setup_groups, start_groups
from r1ray.workers.placement import Placement

from r1ray.controller.roles import build_reward_group, build_rollout_group, release, shutdown_groups


def correct_flags(cfg: R1RayConfig, scored: ScoreBatch) -> list[bool]:
    """A sample is correct when the accuracy reward (the first of reward.functions) gives it >= 1.0,
    the score every shipped accuracy reward gives a right answer."""
    name = cfg.reward.functions[0]
    return [(r.components.get(name) or 0.0) >= 1.0 for r in scored.results]


class InferenceRoles:
    """Rollout and reward groups only: what `r1ray eval` and `r1ray sample` need."""

    def __init__(self, cfg: R1RayConfig, placement: Placement, model_path: str | None = None):
        from dataclasses import replace

        if model_path:
            cfg = replace(cfg, model=replace(cfg.model, path=model_path))
        slots = placement.only(["rollout", "reward"]).create(cfg.trainer.startup_timeout_s)
        started: list[WorkerGroup] = []
        try:
            self.rollout = build_rollout_group(cfg, slots["rollout"], placement, wait=False)
            started.append(self.rollout)
            self.reward = build_reward_group(cfg, slots["reward"], wait=False)
            started.append(self.reward)
            start_groups(started)
            setup_groups(started, cfg.trainer.startup_timeout_s)
        except BaseException:
            release(started, slots)          # nothing reserved outlives a failed start
            raise

    def generate(self, prompts: PromptBatch, sampling: SamplingParams) -> RolloutBatch:
        return self.rollout.generate(prompts, sampling)

    def score(self, rollout: RolloutBatch) -> ScoreBatch:
        return self.reward.score(rollout)

    def shutdown(self) -> None:
        shutdown_groups([self.rollout, self.reward])
