"""Evaluation on the held-out prompts during training: greedy (or sampled) answers, scored by the rewards.

A sample counts as correct when the first reward function (the accuracy reward, `auto` by default) gives
it at least 1.0 — the score every shipped accuracy reward gives a right answer.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from r1ray.protocol import SamplingParams

from r1ray.controller.run_setup import prompt_batch
from r1ray.controller.schedule import response_budget

if TYPE_CHECKING:
    from r1ray.controller.trainer import Trainer

logger = logging.getLogger(__name__)


def evaluate(trainer: "Trainer", step: int) -> dict[str, float]:
    cfg = trainer.cfg
    t = cfg.trainer
    prompts = prompt_batch(trainer.data.val.items)
    sampling = SamplingParams(n=t.eval_n, temperature=t.eval_temperature, top_p=cfg.rollout.top_p,
                              top_k=cfg.rollout.top_k, max_new_tokens=response_budget(cfg.rollout, max(step, 1)),
                              seed=t.seed + 7)
    rollout = trainer.generate(prompts, sampling)
    scored = trainer.score(rollout)
    accuracy_fn = cfg.reward.functions[0]
    correct = [float((r.components.get(accuracy_fn) or 0.0) >= 1.0) for r in scored.results]
    scores = [s for s in scored.scores if s is not None]
    metrics = {
        "eval/pass@1": sum(correct) / len(correct),
        "eval/reward_mean": sum(scores) / len(scores) if scores else float("nan"),
        "eval/response_length/mean": float(rollout.response_lens.float().mean()),
        "eval/unscorable_count": float(len(correct) - len(scores)),
    }
    logger.info("eval at step %d: pass@1 %.3f over %d samples", step, metrics["eval/pass@1"], len(correct))
    return metrics
