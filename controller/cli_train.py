"""`r1ray train` and `r1ray export`: the commands that start workers."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable

from r1ray.user_code import check_user_code

logger = logging.getLogger(__name__)


def _train_cmd(args: argparse.Namespace) -> int:
    from r1ray.config_load import load_config
    from r1ray.controller.run_lock import RunLock

    # Validate before importing the training stack (torch, Ray, transformers: seconds), so a bad config
    # is rejected at once; so is a directory another run holds. The lock covers the plots too.
    cfg = load_config(args.config, args.overrides)
    check_user_code(cfg)                 # the config's own modules, imported in a child process
    with RunLock(Path(cfg.trainer.output_dir)):
        return _train(cfg)


def _train(cfg) -> int:
    """`r1ray train` once its config is valid and its output directory locked."""
    from r1ray.controller.pipeline import run_pipeline
    from r1ray.controller.plot import plot_run
    from r1ray.controller.ray_cluster import check_before_start
    from r1ray.controller.trainer import Trainer

    logging.getLogger().setLevel(cfg.logging.level)
    check_before_start(cfg)              # before any file but the lock, which a refusal here removes
    out = Path(cfg.trainer.output_dir)
    if cfg.stages:
        run_pipeline(cfg)
    else:
        Trainer(cfg).fit()
    plots = plot_run(out)
    print(f"done: output in {out}; {len(plots)} plots in {plots[0].parent if plots else '-'}")
    for line in eval_summary(out):
        print(line)
    return 0


def eval_summary(out: Path) -> list[str]:
    """'held-out pass@1: 0.12 (step 0) -> 0.56 (step 200)' for each run directory with eval metrics."""
    from r1ray.controller.plot import load_metrics, natural_key

    lines = []
    # Stages in pipeline order: 2_grpo before 10_grpo.
    stages = sorted(out.glob("*/metrics.jsonl"), key=lambda f: natural_key(f.parent.name))
    for metrics_file in [out / "metrics.jsonl", *stages]:
        if not metrics_file.is_file():
            continue
        # load_metrics skips a line a crash cut short; the summary must not fail a finished run.
        steps, values = load_metrics(metrics_file).get("eval/pass@1", ([], []))
        if steps:
            lines.append(f"{metrics_file.parent.name}: held-out pass@1 {values[0]:.3f} (step {steps[0]}) "
                         f"-> {values[-1]:.3f} (step {steps[-1]})")
    return lines


def _sft_cmd(args: argparse.Namespace) -> int:
    from r1ray.config_load import load_config
    from r1ray.controller.sft import run_sft

    cfg = load_config(args.config, args.overrides)
    logging.getLogger().setLevel(cfg.logging.level)
    print(f"done: SFT model in {run_sft(cfg)}")
    return 0


def _eval_cmd(args: argparse.Namespace) -> int:
    import json

    from r1ray.config_load import load_config
    from r1ray.controller.evaluate import run_eval

    cfg = load_config(args.config, args.overrides)
    check_user_code(cfg)
    result = run_eval(cfg)
    print(json.dumps(result["metrics"], indent=2))
    print(f"wrote {result['path']}")
    return 0


def _sample_cmd(args: argparse.Namespace) -> int:
    from r1ray.config_load import load_config
    from r1ray.controller.sample import run_sample

    cfg = load_config(args.config, args.overrides)
    check_user_code(cfg)
    print(f"wrote rejection-sampled SFT data to {run_sample(cfg)}")
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

    p = sub.add_parser("eval", help="pass@k, majority vote and behaviour rates on data.val_files, to JSON")
    add_config_args(p, required=True)
    p.set_defaults(func=_eval_cmd)

    p = sub.add_parser("sample", help="rejection sampling (or distillation with sample.teacher_path) into SFT data")
    add_config_args(p, required=True)
    p.set_defaults(func=_sample_cmd)

    from r1ray.controller.plot import add_plot_command

    add_plot_command(sub)

    p = sub.add_parser("export", help="write a checkpoint's policy in Hugging Face format")
    p.add_argument("checkpoint", help="a step_* directory under <output_dir>/checkpoints")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_export_cmd)
