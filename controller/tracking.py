"""Trackers: console progress bar, metrics.jsonl, TensorBoard and wandb, behind one `log(step, metrics)`."""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class ConsoleTracker:
    """A tqdm bar over the run's steps; the postfix shows reward, response length and per-stage seconds."""

    def __init__(self, total_steps: int, start_step: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_steps, initial=start_step, desc="r1ray", unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        shown = {k: metrics[k] for k in ("reward/mean", "response_length/mean", "eval/pass@1") if k in metrics}
        stages = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("timing_s/") and k != "timing_s/step"}
        postfix = {**{k.split("/")[0] if k != "response_length/mean" else "len": f"{v:.3g}" for k, v in shown.items()},
                   **{k: f"{v:.1f}s" for k, v in stages.items()}}
        self.bar.set_postfix(postfix, refresh=False)
        if "timing_s/step" in metrics:
            self.bar.update(step - self.bar.n)

    def close(self) -> None:
        self.bar.close()


class JsonlTracker:
    """<output_dir>/metrics.jsonl: one object per step. On resume, lines past the checkpoint are dropped
    so a crashed run's extra steps are not counted twice."""

    def __init__(self, path: Path, start_step: int):
        self.path = path
        if path.exists():
            # A run from step 0 (fresh, or restarted before its first checkpoint) keeps nothing: its step 0
            # is the evaluation before training, logged again.
            kept = [line for line in path.read_text().splitlines() if start_step and _step_of(line) <= start_step]
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)
        self.file = path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _step_of(line: str) -> float:
    """The step of a metrics.jsonl line; infinity (dropped on resume) for a blank line or one that a crash
    cut short, which would otherwise make the run impossible to resume."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return math.inf


class TensorBoardTracker:
    def __init__(self, logdir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(logdir))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """Online with WANDB_API_KEY set, offline otherwise; resumes the same run id after a restart."""

    def __init__(self, project: str, name: str, run_id: str, out_dir: Path, config: dict[str, Any]):
        import wandb

        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        self.run = wandb.init(project=project, name=name, id=run_id, resume="allow", mode=mode, dir=str(out_dir),
                              config=config)
        logger.info("wandb run %s (%s)", run_id, mode)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """All enabled trackers; `run_id` persists in checkpoints so a resumed run continues the same curves."""

    def __init__(self, trackers: list[Tracker], run_id: str):
        self.trackers = trackers
        self.run_id = run_id

    @classmethod
    def build(cls, logging_cfg: Any, out_dir: Path, *, total_steps: int, start_step: int, run_id: str | None,
              config: dict[str, Any]) -> "Trackers":
        run_id = run_id or uuid.uuid4().hex[:12]
        trackers: list[Tracker] = []
        if logging_cfg.jsonl:
            trackers.append(JsonlTracker(out_dir / "metrics.jsonl", start_step))
        if logging_cfg.tensorboard:
            trackers.append(TensorBoardTracker(out_dir / "tensorboard"))
        if logging_cfg.wandb:
            name = logging_cfg.run_name or out_dir.name
            trackers.append(WandbTracker(logging_cfg.wandb_project, name, run_id, out_dir, config))
        if logging_cfg.console:
            trackers.append(ConsoleTracker(total_steps, start_step))
        return cls(trackers, run_id)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for tracker in self.trackers:
            tracker.log(step, metrics)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
