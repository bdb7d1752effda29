"""`r1ray sft`: supervised fine-tuning on the actor's engine and worker group (cold start, rejection-sampled
data, distillation). Sequences are packed, cut by the token budget, and only response tokens carry loss.
The result is a Hugging Face model directory at `<output_dir>/model`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import ray
import torch

from r1ray.config import R1RayConfig
from r1ray.config_checks import prompt_style
from r1ray.data import load_rows, write_rows
from r1ray.data.sft import SFTExample, cold_start_rows, load_sft_rows, tokenize_sft
from r1ray.models import load_tokenizer
from r1ray.protocol import TrainBatch, length_mask, pack, pad_right
from r1ray.workers.role_groups import ActorGroup
from r1ray.workers.placement import Placement

from r1ray.controller.metrics import StageTimer, mean_over_ranks
from r1ray.controller.ray_cluster import connect_for
from r1ray.controller.roles import engine_spec, loss_settings, shutdown_groups
from r1ray.controller.run_lock import holds_output_dir
from r1ray.controller.run_setup import column_map, prepare_files
from r1ray.controller.tracking import Trackers

logger = logging.getLogger(__name__)


def sft_batch(examples: list[SFTExample]) -> TrainBatch:
    """Packed prompt+response sequences with the loss mask on response tokens."""
    tokens, cu = pack([e.prompt_ids + e.response_ids for e in examples])
    lens = torch.tensor([len(e.response_ids) for e in examples])
    mask = length_mask(lens, int(lens.max()))
    return TrainBatch(tokens=tokens, cu_seqlens=cu, prompt_lens=torch.tensor([len(e.prompt_ids) for e in examples]),
                      response_mask=mask, advantages=pad_right([torch.zeros(0)] * len(examples), width=mask.shape[1]))


def check_sft_source(cfg: R1RayConfig) -> None:
    """Fail before anything is built or written when there is nothing to train on."""
    if not cfg.sft.train_files and not cfg.sft.generate_cold_start:
        raise ValueError("sft.train_files: empty; list SFT files or set sft.generate_cold_start=true with data.generate")


def sft_files(cfg: R1RayConfig) -> list[str]:
    """sft.train_files, or cold-start rows written from the generated task data."""
    check_sft_source(cfg)
    if cfg.sft.train_files:
        return list(cfg.sft.train_files)
    rows = load_rows(cfg.data.train_files, column_map(cfg))[:cfg.sft.cold_start_size]
    out = Path(cfg.trainer.output_dir) / "data" / "cold_start_sft.jsonl"
    write_rows(cold_start_rows(rows, slip_rate=cfg.sft.cold_start_slip_rate, seed=cfg.trainer.seed), out)
    return [str(out)]


@holds_output_dir
def run_sft(cfg: R1RayConfig, placement: Placement | None = None) -> Path:
    """Train, then write the model; returns its directory."""
    check_sft_source(cfg)
    out_dir = Path(cfg.trainer.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = prepare_files(cfg)
    tokenizer = load_tokenizer(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    examples, _ = tokenize_sft(load_sft_rows(sft_files(cfg)), tokenizer, prompt_style(cfg.data), cfg.sft.max_length)
    placement = (placement or Placement.from_config(cfg.placement)).only(["actor"])
    ranks = placement.pools[placement.roles["actor"]].size
    per_step = cfg.sft.sequences_per_step // ranks * ranks
    steps_per_epoch = len(examples) // per_step
    if steps_per_epoch < 1:
        raise ValueError(f"sft.sequences_per_step: {per_step} exceeds the {len(examples)} SFT examples; lower it")
    total = steps_per_epoch * cfg.sft.epochs
    total = min(total, cfg.sft.max_steps) if cfg.sft.max_steps else total
    connect_for(cfg.ray, placement)
    spec = replace(engine_spec(cfg, total), lr=cfg.sft.lr or cfg.actor.lr)
    slots = placement.create(cfg.trainer.startup_timeout_s)
    actor = ActorGroup(slots["actor"], engine_kind=cfg.actor.engine, spec=spec, loss=loss_settings(cfg),
                       startup_timeout_s=cfg.trainer.startup_timeout_s,
                       collective_timeout_s=cfg.trainer.collective_timeout_s)
    trackers = Trackers.build(replace(cfg.logging, wandb=False), out_dir, total_steps=total, start_step=0,
                              run_id=None, config={})
    try:
        actor.setup()
        rng = np.random.default_rng(cfg.trainer.seed)
        for step in range(1, total + 1):
            if (step - 1) % steps_per_epoch == 0:
                order = rng.permutation(len(examples))
            start = (step - 1) % steps_per_epoch * per_step
            timer = StageTimer()
            with timer("update_actor"):
                batch = sft_batch([examples[i] for i in order[start:start + per_step]])
                metrics = mean_over_ranks(ray.get(actor.sft_update_async(batch)))
            trackers.log(step, {**metrics, **timer.metrics()})
        model_dir = actor.save_hf(out_dir / "model")
    finally:
        trackers.close()
        shutdown_groups([actor])
    logger.info("SFT done: %d steps, model at %s", total, model_dir)
    return model_dir
