"""`r1ray sample`: rejection sampling into SFT data (DeepSeek-R1 §2.3.3), and distillation's sampling side.

k samples per training prompt from the rollout engines (the policy, or `sample.teacher_path` for
distillation), scored by the reward workers; correct ones pass R1's filters (no truncated responses, no
mixed-language or unreadable reasoning, no duplicates of the same prompt) and up to
`sample.keep_per_prompt` per prompt are written as SFT rows for `r1ray sft`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from r1ray.config import R1RayConfig
from r1ray.data import write_rows
from r1ray.evaluation import FilterStats, extract_final_answer, filter_sft_rows, normalize_text
from r1ray.protocol import RolloutBatch, SamplingParams
from r1ray.workers.placement import Placement

from r1ray.controller.inference import InferenceRoles, correct_flags
from r1ray.controller.run_lock import holds_output_dir
from r1ray.controller.run_setup import prompt_batch, start_inference_run
from r1ray.controller.schedule import response_budget

logger = logging.getLogger(__name__)

PROMPTS_PER_CALL = 64


def candidates(rollout: RolloutBatch, correct: list[bool], prompts: list) -> list[list[dict]]:
    """Per prompt, its k samples as candidate rows (rows of a rollout are grouped by prompt)."""
    n = rollout.group_size
    lens = rollout.response_lens.tolist()
    return [[{"prompt": prompts[g], "response": rollout.response_texts[i], "correct": correct[i],
              "truncated": bool(rollout.truncated[i]), "tokens": lens[i]}
             for i in range(g * n, (g + 1) * n)] for g in range(len(rollout) // n)]


def _correct_and_formatted(row: dict) -> bool:
    return row["correct"] and extract_final_answer(row["response"]) is not None


def select(groups: list[list[dict]], keep: int, language: str,
           seen: dict[str, set[str]] | None = None) -> tuple[list[dict], FilterStats]:
    """SFT rows from candidate groups: correct, finished, filtered, at most `keep` distinct responses per
    prompt. Generated data repeats prompts, so the limit and the duplicate check hold per prompt text, across
    groups and across calls sharing `seen` (prompt -> normalized responses kept). Rows past the limit
    passed the filters and count as kept in the stats."""
    seen = {} if seen is None else seen
    total = FilterStats()
    kept: list[dict] = []
    for group in groups:
        # A truncated response never finished its answer: R1 drops it as overlong. A response the accuracy
        # reward accepts from a bare number, with no <answer> (or \boxed) to read, would teach a broken format.
        rows, stats = filter_sft_rows(group, "response", correct=_correct_and_formatted,
                                      max_length=0, length=lambda r: int(r["truncated"]),
                                      language=language or None)
        for r in rows:
            taken = seen.setdefault(json.dumps(r["prompt"], sort_keys=True), set())
            text = normalize_text(r["response"])
            if text in taken:
                stats.kept -= 1
                stats.duplicate += 1
            elif len(taken) < keep:
                taken.add(text)
                kept.append({"prompt": r["prompt"], "response": r["response"]})
        total.add(stats)
    return kept, total


@holds_output_dir
def run_sample(cfg: R1RayConfig, placement: Placement | None = None) -> Path:
    out_dir = Path(cfg.trainer.output_dir)
    cfg, placement, data = start_inference_run(cfg, placement)
    s = cfg.sample
    sampling = SamplingParams(n=s.k, temperature=s.temperature, top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k,
                              max_new_tokens=response_budget(cfg.rollout, 10**9), seed=cfg.trainer.seed)
    roles = InferenceRoles(cfg, placement, model_path=s.teacher_path or None)
    kept: list[dict] = []
    stats = FilterStats()
    seen: dict[str, set[str]] = {}
    try:
        items = data.train.items
        for start in range(0, len(items), PROMPTS_PER_CALL):
            chunk = items[start:start + PROMPTS_PER_CALL]
            rollout = roles.generate(prompt_batch(chunk), sampling)
            groups = candidates(rollout, correct_flags(cfg, roles.score(rollout)), [it.row.prompt for it in chunk])
            rows, chunk_stats = select(groups, s.keep_per_prompt, s.filter_language, seen)
            kept += rows
            stats.add(chunk_stats)
    finally:
        roles.shutdown()
    out = Path(s.out_file) if s.out_file else out_dir / "sampled_sft.jsonl"
    if not kept:
        raise ValueError(f"rejection sampling kept no rows ({stats}); sample more (sample.k) or train the policy first")
    write_rows(kept, out)
    (out_dir / "sample_stats.json").write_text(json.dumps({"kept_rows": len(kept), "filters": str(stats)}, indent=2))
    logger.info("rejection sampling: kept %d rows from %d prompts x %d samples (%s) -> %s",
                len(kept), len(data.train), s.k, stats, out)
    return out
