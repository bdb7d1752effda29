"""Evaluation: pass@1 averaged over k samples, unbiased pass@k, majority vote (maj@k), per data source,
plus reasoning-behaviour rates. Used periodically during training and by `r1ray eval`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from r1ray.config import R1RayConfig
from r1ray.data import PromptDataset
from r1ray.evaluation import EvalGroup, behaviour_rates, extract_final_answer, summarize
from r1ray.protocol import RolloutBatch, SamplingParams
from r1ray.rewards import ScoreBatch
from r1ray.workers.placement import Placement

from r1ray.controller.inference import InferenceRoles, correct_flags
from r1ray.controller.run_lock import holds_output_dir
from r1ray.controller.run_setup import prompt_batch, start_inference_run
from r1ray.controller.schedule import response_budget

logger = logging.getLogger(__name__)


def eval_metrics(cfg: R1RayConfig, rollout: RolloutBatch, scored: ScoreBatch, ks: list[int]) -> dict[str, float]:
    """Metrics of n samples per prompt (rows grouped by prompt)."""
    n = rollout.group_size
    correct = correct_flags(cfg, scored)
    lens = rollout.response_lens.tolist()
    groups = [EvalGroup(data_source=rollout.data_sources[i],
                        answers=[extract_final_answer(t) for t in rollout.response_texts[i:i + n]],
                        correct=correct[i:i + n], response_lengths=lens[i:i + n])
              for i in range(0, len(rollout), n)]
    metrics = summarize(groups, [k for k in ks if k <= n])
    scores = [s for s in scored.scores if s is not None]
    metrics["eval/reward_mean"] = sum(scores) / len(scores) if scores else float("nan")
    metrics["eval/unscorable_count"] = float(len(scored.results) - len(scores))
    behaviour = behaviour_rates(rollout.response_texts, cfg.eval.behaviour_words)
    metrics.update({f"eval/{k}": v for k, v in behaviour.items()})
    return metrics


def evaluate_dataset(cfg: R1RayConfig, roles, dataset: PromptDataset, sampling: SamplingParams,
                     ks: list[int]) -> dict[str, float]:
    rollout = roles.generate(prompt_batch(dataset.items), sampling)
    return eval_metrics(cfg, rollout, roles.score(rollout), ks)


def training_eval_sampling(cfg: R1RayConfig, step: int) -> SamplingParams:
    t = cfg.trainer
    return SamplingParams(n=t.eval_n, temperature=t.eval_temperature, top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k,
                          max_new_tokens=response_budget(cfg.rollout, max(step, 1)), seed=t.seed + 7)


@holds_output_dir
def run_eval(cfg: R1RayConfig, placement: Placement | None = None) -> dict:
    """`r1ray eval`: evaluate model.path on data.val_files with the eval section's sampling; write JSON."""
    d = cfg.data
    # prepare_files generates held-out prompts only along with generated training prompts.
    generated = not d.train_files and d.generate.task and d.generate.val_size
    if not d.val_files and not generated:
        raise ValueError("data.val_files: empty; `r1ray eval` needs held-out prompts (data.val_files, or "
                         "data.generate with val_size > 0 and no data.train_files)")
    out_dir = Path(cfg.trainer.output_dir)
    cfg, placement, data = start_inference_run(cfg, placement)
    e = cfg.eval
    sampling = SamplingParams(n=e.n, temperature=e.temperature, top_p=e.top_p,
                              max_new_tokens=response_budget(cfg.rollout, 10**9), seed=cfg.trainer.seed)
    roles = InferenceRoles(cfg, placement)
    try:
        metrics = evaluate_dataset(cfg, roles, data.val, sampling, list(e.ks))
    finally:
        roles.shutdown()
    result = {"model": cfg.model.path, "prompts": len(data.val), "samples_per_prompt": e.n,
              "temperature": e.temperature, "metrics": metrics}
    out = Path(e.out_file) if e.out_file else out_dir / "eval.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    logger.info("eval: pass@1 %.3f over %d prompts x %d samples -> %s", metrics["eval/pass@1"], len(data.val), e.n, out)
    return {**result, "path": str(out)}
