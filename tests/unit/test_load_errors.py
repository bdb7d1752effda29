"""Errors that come from the user's files name the file and the mismatch and are not restarted
(issue 21 item 4): a truncated model.safetensors, another model's checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch
import torch.distributed.checkpoint as dcp

from r1ray.errors import InputMismatch
from r1ray.models import build_tiny_model, load_model_and_tokenizer
from r1ray.models.load_errors import checkpoint_load_errors

from tests.unit.test_restart_policy import FailingTrainer, _cfg


def test_a_truncated_weights_file_is_named(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "tiny", hidden=32, layers=1, heads=4, kv_heads=2, max_position_embeddings=64)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:len(data) // 2])
    with pytest.raises(InputMismatch) as info:
        load_model_and_tokenizer(model)
    assert str(info.value) == (f"model.path={model}: model.safetensors is damaged or truncated (Error while "
                               f"deserializing header: incomplete metadata, file not fully covered); copy or "
                               f"download the model again")


def test_another_models_checkpoint_names_the_tensor_and_both_shapes(tmp_path: Path) -> None:
    dcp.save({"model": {"lm_head.weight": torch.zeros(4, 8)}}, checkpoint_id=tmp_path / "actor", no_dist=True)
    with pytest.raises(InputMismatch) as info, checkpoint_load_errors(tmp_path):
        dcp.load({"model": {"lm_head.weight": torch.zeros(4, 16)}}, checkpoint_id=tmp_path / "actor", no_dist=True)
    assert str(info.value).startswith(
        f"checkpoint {tmp_path}: model.lm_head.weight was saved as torch.Size([4, 8]) but this run's model has "
        f"torch.Size([4, 16]): the checkpoint is of another model than model.path; resume with the model")
    # Anything else passes through unchanged.
    with pytest.raises(RuntimeError, match="^disk on fire$"), checkpoint_load_errors(tmp_path):
        raise RuntimeError("disk on fire")


def test_a_mismatch_from_a_worker_ends_the_run_without_restarts(tmp_path: Path) -> None:
    cause = InputMismatch("checkpoint /x: model.w was saved as torch.Size([4]) but this run's model has torch.Size([8])")
    error = ray.exceptions.RayTaskError("load", "Traceback ...", cause).as_instanceof_cause()
    trainer = FailingTrainer(_cfg(tmp_path, "trainer.max_restarts=3"), error, failures=1)
    with pytest.raises(InputMismatch) as info:
        trainer.fit()
    assert str(info.value) == str(cause)
    assert trainer.resumes == ["never"]                  # not restarted: the same file would load again
