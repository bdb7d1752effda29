"""Pipelines: the DeepSeek-R1 recipe as stages run in order by `r1ray train` (e.g. sft -> grpo -> sample ->
sft -> grpo). Each stage gets `<output_dir>/<index>_<name>/`, its own metrics and checkpoints, starts from
the model the previous stage produced (and an `sft` stage after a `sample` stage trains on its data), and
writes STAGE_COMPLETE.json when done, so a restarted pipeline skips finished stages and resumes the
interrupted one (its GRPO checkpoints included, with trainer.resume=auto).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from r1ray.config import R1RayConfig, StageConfig
from r1ray.config_load import config_from_dict, config_to_dict
from r1ray.errors import NothingToDo

from r1ray.controller.run_lock import holds_output_dir

logger = logging.getLogger(__name__)

MARKER = "STAGE_COMPLETE.json"


@dataclass
class Carry:
    """What flows from one stage to the next."""

    model: str
    sft_data: str | None = None
    results: dict[str, Any] = field(default_factory=dict)


def stage_config(base: R1RayConfig, stage: StageConfig, stage_dir: Path, carry: Carry, first: bool) -> R1RayConfig:
    """The base config with the stage's directory and the carried model (and sampled SFT data), then the
    stage's own overrides. Paths are set in the tree, not written as `key=value` overrides, so a path with
    a comma, colon or bracket stays one path."""
    tree = config_to_dict(base)
    tree["stages"] = []
    tree["trainer"]["output_dir"] = str(stage_dir)
    tree["model"]["path"] = carry.model
    if not first:
        # Later stages load the previous stage's model: nothing to build or fetch.
        tree["model"]["init_tiny"] = False
        tree["model"]["fetch"] = ""
    if stage.kind == "sft" and carry.sft_data:
        # The base sft.train_files are the first SFT stage's (cold-start) data; after a sample stage the
        # SFT stage trains on what was sampled.
        tree["sft"]["train_files"] = [carry.sft_data]
    return config_from_dict(tree, list(stage.overrides))


def run_stage(cfg: R1RayConfig, kind: str, stage_dir: Path) -> dict[str, Any]:
    """Run one stage; returns what it produced (model dir, SFT data, metrics)."""
    if kind == "sft":
        from r1ray.controller.sft import run_sft

        return {"model": str(run_sft(cfg))}
    if kind == "grpo":
        from r1ray.controller.export import export_checkpoint
        from r1ray.controller.trainer import Trainer

        trainer = Trainer(cfg)
        metrics = trainer.fit()
        model = export_checkpoint(trainer.checkpoints.latest(), stage_dir / "model")
        return {"model": str(model), "metrics": metrics}
    if kind == "sample":
        from r1ray.controller.sample import run_sample

        return {"sft_data": str(run_sample(cfg))}
    from r1ray.controller.evaluate import run_eval

    return {"metrics": run_eval(cfg)["metrics"]}


def continue_reason(stage: StageConfig, stage_cfg: R1RayConfig, done: dict[str, Any]) -> str | None:
    """Why a completed stage must run again, or None to skip it: a GRPO stage whose trainer.total_steps
    has grown since it finished continues from its last checkpoint."""
    finished = done.get("total_steps")
    if stage.kind == "grpo" and finished is not None and stage_cfg.trainer.total_steps > finished:
        return f"finished at step {finished}, trainer.total_steps is now {stage_cfg.trainer.total_steps}"
    return None


@holds_output_dir
def run_pipeline(cfg: R1RayConfig) -> Carry:
    """Run the stages in order; finished ones are skipped unless they have more to do (`continue_reason`),
    and every stage after one that ran again is redone from its new output. Raises NothingToDo when every
    stage was already complete."""
    root = Path(cfg.trainer.output_dir)
    carry = Carry(model=cfg.model.path)
    redo = False                         # an earlier stage ran again: later outputs are stale
    ran = 0
    for index, stage in enumerate(cfg.stages, start=1):
        name = stage.name or stage.kind
        stage_dir = root / f"{index}_{name}"
        marker = stage_dir / MARKER
        stage_cfg = stage_config(cfg, stage, stage_dir, carry, first=index == 1)
        done = json.loads(marker.read_text()) if marker.is_file() else None
        reason = continue_reason(stage, stage_cfg, done) if done is not None else None
        if done is not None and not redo and reason is None:
            logger.info("stage %d (%s) already complete; skipping", index, name)
        else:
            if reason is not None and not redo:
                logger.info("stage %d (%s) %s: continuing it from its last checkpoint", index, name, reason)
                stage_cfg = replace(stage_cfg, trainer=replace(stage_cfg.trainer, resume="auto"))
            elif done is not None:
                logger.info("stage %d (%s): an earlier stage ran again, so it is redone from the new model", index, name)
                stage_cfg = replace(stage_cfg, trainer=replace(stage_cfg.trainer, resume="never", overwrite=True))
            logger.info("stage %d/%d: %s (%s) -> %s", index, len(cfg.stages), stage.name, stage.kind, stage_dir)
            done = run_stage(stage_cfg, stage.kind, stage_dir)
            if stage.kind == "grpo":
                done["total_steps"] = stage_cfg.trainer.total_steps
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(json.dumps(done, indent=2, default=float))
            os.replace(tmp, marker)
            redo, ran = True, ran + 1
        carry.model = done.get("model", carry.model)
        carry.sft_data = done.get("sft_data", carry.sft_data)
        carry.results[f"{index}_{stage.name or stage.kind}"] = done.get("metrics", {})
    if not ran:
        raise NothingToDo(f"all {len(cfg.stages)} stages in {root} are already complete; nothing was run (raise "
                          f"trainer.total_steps to continue the GRPO stages, or choose a new trainer.output_dir)")
    return carry
