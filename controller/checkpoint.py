"""Atomic checkpoints: written under a temporary name, renamed when complete, newest complete one wins.

Layout of `<output_dir>/checkpoints/step_000010/`:
    actor/               sharded weights + optimizer and LR scheduler: torch.distributed.checkpoint (FSDP2) or
                         DeepSpeed's own layout (engine/mp_rank_00_model_states.pt + ZeRO shards)
    hf/                  the model's config.json and tokenizer files, so `r1ray export` needs nothing else
    trainer_state.json   step, data sampler position, tracker run id, the steps dispatched but not trained
    rng.pt               controller RNG states (python, numpy, torch)
    pending_rollouts.pt  asynchronous runs only: those steps' prompts and generated batches
    config.yaml          the resolved config, secrets redacted
    MANIFEST.json        every file above with its size, so that a damaged checkpoint is recognised
    COMPLETE             written last, before the rename
A directory without COMPLETE, or still under its `.tmp-` name, is never loaded; resume=auto passes over a
complete one whose files no longer match its manifest (a deleted shard, a truncated file) to the one
before it, and says so.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from r1ray.models.export import copy_model_files

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step_(\d{6,})$")
MANIFEST = "MANIFEST.json"
# What any loadable checkpoint holds, also one written before manifests existed.
REQUIRED = ("trainer_state.json", "rng.pt", "actor")


def damage(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be loaded, or None when it can."""
    if not (path / "COMPLETE").is_file():
        return "no COMPLETE marker"
    missing = [name for name in REQUIRED if not (path / name).exists()]
    if missing:
        return f"{missing[0]} is missing"
    try:
        TrainerState(**json.loads((path / "trainer_state.json").read_text()))
    except (ValueError, TypeError) as exc:
        return f"trainer_state.json is unreadable ({exc})"
    manifest = path / MANIFEST
    if not manifest.is_file():
        return None                       # written before manifests: the required files are there
    for name, size in json.loads(manifest.read_text()).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {size} were written"
    return None


@dataclass
class TrainerState:
    step: int
    sampler: dict[str, int]
    run_id: str
    # Asynchronous runs: steps after `step` whose prompts the sampler has already given out (their
    # generations were in flight); pending_rollouts.pt holds their prompts and batches.
    pending_steps: list[int] = field(default_factory=list)
    # The actor's weight version (updates taken; a step with no reward spread takes none); -1 in checkpoints
    # written before versions existed, read as `step`.
    version: int = -1


PENDING = "pending_rollouts.pt"


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class CheckpointManager:
    def __init__(self, root: Path, keep: int):
        self.root = root
        self.keep = keep

    def save(self, state: TrainerState, *, write_actor: Callable[[Path], None], model_path: str,
             config_yaml: str, pending: dict[int, Any] | None = None) -> Path:
        """`write_actor(dir)` makes the actor ranks write their shards into `dir` (a collective); `pending`
        maps the steps in `state.pending_steps` to what an asynchronous run dispatched for them."""
        final = self.root / f"step_{state.step:06d}"
        tmp = self.root / f".tmp-step_{state.step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            self._write(tmp, state, write_actor, model_path, config_yaml, pending)
        except Exception as exc:
            free = _free_bytes(self.root)           # before the partial files go
            shutil.rmtree(tmp, ignore_errors=True)
            if not out_of_space(exc, free):
                raise
            previous = self.latest()
            raise CheckpointWriteError(
                f"checkpoint of step {state.step}: no space left on device under {self.root} ({free} bytes free); "
                f"the partial checkpoint was removed and {previous or 'no earlier checkpoint'} is untouched; free "
                f"space (or lower trainer.keep_checkpoints) and go on with trainer.resume=auto") from exc
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        logger.info("checkpoint written: %s", final)
        self._prune()
        return final

    @staticmethod
    def _write(tmp: Path, state: TrainerState, write_actor: Callable[[Path], None], model_path: str,
               config_yaml: str, pending: dict[int, Any] | None) -> None:
        tmp.mkdir(parents=True)
        write_actor(tmp / "actor")
        if Path(model_path).is_dir():
            copy_model_files(Path(model_path), tmp / "hf")
        (tmp / "trainer_state.json").write_text(json.dumps(state.__dict__, indent=2))
        torch.save(rng_state(), tmp / "rng.pt")
        if state.pending_steps:
            torch.save(pending, tmp / PENDING)
        (tmp / "config.yaml").write_text(config_yaml)
        sizes = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        (tmp / MANIFEST).write_text(json.dumps(sizes, indent=1))
        (tmp / "COMPLETE").write_text("ok\n")

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir()
                 if (m := STEP_DIR.match(p.name)) and (p / "COMPLETE").is_file()]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def latest_loadable(self) -> Path | None:
        """The newest complete checkpoint that is not damaged; each damaged one passed over is logged."""
        for path in reversed(self.complete()):
            problem = damage(path)
            if problem is None:
                return path
            logger.warning("checkpoint %s is damaged (%s); trying the one before it", path, problem)
        return None

    def _prune(self) -> None:
        for old in self.complete()[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob(".tmp-step_*"):
            shutil.rmtree(stale, ignore_errors=True)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written for want of disk space; the earlier checkpoints are untouched."""


# Below this many free bytes after a failed write, the write is taken to have failed for want of space:
# torch.save reports a full disk as "unexpected pos N vs M" (its zip writer), not as ENOSPC.
LOW_SPACE_BYTES = 1 << 20


def out_of_space(exc: BaseException, free_bytes: int) -> bool:
    """Whether a failed checkpoint write ran out of disk space: ENOSPC anywhere in the cause chain (a
    worker's error arrives wrapped by Ray), else a nearly full filesystem."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(seen):
            return True
        seen = getattr(seen, "cause", None) or seen.__cause__ or seen.__context__
    return free_bytes < LOW_SPACE_BYTES


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


# What a GRPO run writes into its output_dir (besides files it rebuilds: data, the tiny model, plots).
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard")


def claim_output_dir(out_dir: Path, resume: str, overwrite: bool) -> None:
    """A fresh run (resume=never) must not mix with an earlier run in the same directory: its metrics.jsonl
    would be cut back to the new run and its checkpoints, newer than the new run's, picked by a later
    resume=auto. Refuse, or with `overwrite` remove the earlier run's outputs first."""
    if resume != "never":
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"trainer.output_dir {out_dir}: is a file; choose a directory")
    found = [name for name in RUN_OUTPUTS if _holds_something(out_dir / name)]
    if not found:
        return
    steps = CheckpointManager(out_dir / "checkpoints", keep=1).complete()
    if overwrite:
        logger.warning("trainer.overwrite=true: removing the earlier run in %s (%s)", out_dir, ", ".join(found))
        for name in found:
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
        return
    held = f"checkpoints up to {steps[-1].name}" if steps else ", ".join(found)
    raise ValueError(f"trainer.output_dir {out_dir}: already holds a run ({held}); continue it with "
                     f"trainer.resume=auto, write elsewhere with trainer.output_dir=..., or replace it with "
                     f"trainer.overwrite=true")


def _holds_something(path: Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.is_file() and path.stat().st_size > 0


def read_checkpoint(path: Path) -> tuple[TrainerState, dict[str, Any]]:
    """The trainer state and RNG states of a complete checkpoint; refuses incomplete ones."""
    if not (path / "COMPLETE").is_file():
        raise FileNotFoundError(f"{path}: not a complete r1ray checkpoint (no COMPLETE marker); "
                                f"pass a step_* directory under <output_dir>/checkpoints")
    problem = damage(path)
    if problem is not None:
        raise FileNotFoundError(f"{path}: damaged checkpoint ({problem}); resume from an earlier step_* "
                                f"directory, or use trainer.resume=auto to take the newest undamaged one")
    state = TrainerState(**json.loads((path / "trainer_state.json").read_text()))
    return state, torch.load(path / "rng.pt", weights_only=False)


def read_pending(path: Path, state: TrainerState) -> dict[int, Any]:
    """What an asynchronous run had dispatched when it wrote the checkpoint at `path` ({} for none)."""
    if not state.pending_steps:
        return {}
    pending = torch.load(path / PENDING, weights_only=False)
    if sorted(pending) != sorted(state.pending_steps):
        raise FileNotFoundError(f"{path / PENDING}: holds steps {sorted(pending)}, trainer_state.json names "
                                f"{state.pending_steps}; resume from an earlier checkpoint")
    return pending
