"""`r1ray train` and `r1ray export`: the commands that start workers."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)


def _train_cmd(args: argparse.Namespace) -> int:
    from r1ray.config import load_config
    from r1ray.controller.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    logging.getLogger().setLevel(cfg.logging.level)
    metrics = Trainer(cfg).fit()
    shown = {k: round(v, 4) for k, v in metrics.items() if k in ("reward/mean", "eval/pass@1", "timing_s/step")}
    print(f"done: {cfg.trainer.total_steps} steps, output in {cfg.trainer.output_dir} {shown}")
    return 0


def _sft_cmd(args: argparse.Namespace) -> int:
    from r1ray.config import load_config
    from r1ray.controller.sft import run_sft

    cfg = load_config(args.config, args.overrides)
    logging.getLogger().setLevel(cfg.logging.level)
    print(f"done: SFT model in {run_sft(cfg)}")
    return 0


def _export_cmd(args: argparse.Namespace) -> int:
    from r1ray.controller.export import export_checkpoint

    out = export_checkpoint(Path(args.checkpoint), Path(args.out))
    print(f"wrote a Hugging Face model to {out}")
    return 0


def add_train_commands(sub: argparse._SubParsersAction, add_config_args: Callable) -> None:
    p = sub.add_parser("train", help="run GRPO (starts or joins a Ray cluster)")
    add_config_args(p, required=True)
    p.set_defaults(func=_train_cmd)

    p = sub.add_parser("sft", help="supervised fine-tuning on the actor engine (cold start, rejection-sampled data)")
    add_config_args(p, required=True)
    p.set_defaults(func=_sft_cmd)

    p = sub.add_parser("export", help="write a checkpoint's policy in Hugging Face format")
    p.add_argument("checkpoint", help="a step_* directory under <output_dir>/checkpoints")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_export_cmd)
