"""A disk that fills up during a checkpoint: one line saying so, the earlier checkpoint untouched, nothing
half-written left, and the run resumable once there is room again. The disk is a real small tmpfs mounted
over the run's checkpoints directory (root with CAP_SYS_ADMIN; skipped elsewhere)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from r1ray.controller.checkpoint import CheckpointManager, CheckpointWriteError, TrainerState
from r1ray.controller.trainer import Trainer

pytestmark = pytest.mark.timeout(600)

# One checkpoint of the test model takes about 0.94 MB: room for one, not for the next beside it.
ROOM_FOR_ONE = "1400k"


def _mount(where: Path, size: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or done.returncode}): "
                    f"needs root with CAP_SYS_ADMIN")


@pytest.fixture
def small_disk(tmp_path):
    """`small_disk(path, size)` mounts a tmpfs of `size` at `path`; all are unmounted afterwards."""
    mounted: list[Path] = []

    def mount(where: Path, size: str) -> Path:
        _mount(where, size)
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_torch_save_on_a_full_disk_is_reported_as_no_space(small_disk, tmp_path):
    """torch.save's own report of a full disk is 'unexpected pos N vs M'; the manager names the cause."""
    root = small_disk(tmp_path / "ckpt", "256k")
    manager = CheckpointManager(root, keep=2)
    state = TrainerState(step=1, sampler={"epoch": 0, "position": 2}, run_id="r")
    first = manager.save(state, write_actor=lambda d: d.mkdir(), model_path="", config_yaml="x: 1\n")
    big = torch.zeros(200_000)                     # 800 KB
    with pytest.raises(CheckpointWriteError) as failure:
        manager.save(TrainerState(2, state.sampler, "r"), write_actor=lambda d: (d.mkdir(), torch.save(big, d / "w.pt")),
                     model_path="", config_yaml="x: 1\n")
    message = str(failure.value)
    assert message.startswith(f"checkpoint of step 2: no space left on device under {root} (")
    assert f"the partial checkpoint was removed and {first} is untouched" in message
    assert "unexpected pos" in str(failure.value.__cause__)
    assert sorted(p.name for p in root.iterdir()) == ["step_000001"]
    assert manager.latest_loadable() == first


def test_a_run_whose_disk_fills_during_a_checkpoint_stops_with_one_line_and_resumes(
        ray_cluster, small_config, small_disk, tmp_path):
    out = tmp_path / "run"
    checkpoints = small_disk(out / "checkpoints", ROOM_FOR_ONE)
    run = ("trainer.total_steps=2", "trainer.save_every=1", "trainer.keep_checkpoints=1")
    with pytest.raises(CheckpointWriteError, match=r"^checkpoint of step 2: no space left on device under "):
        Trainer(small_config(out, *run)).fit()
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_000001"]      # nothing half-written left
    subprocess.run(["mount", "-o", "remount,size=8m", str(checkpoints)], check=True)
    Trainer(small_config(out, *run, "trainer.resume=auto")).fit()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_000002"]
