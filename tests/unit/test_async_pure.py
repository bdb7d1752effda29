"""Asynchronous GRPO's pure parts: staleness metrics from the version stamps, the bound they guard, and a
checkpoint that carries the batches dispatched ahead of it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from r1ray.controller.checkpoint import CheckpointManager, TrainerState, read_checkpoint, read_pending
from r1ray.controller.metrics import staleness_metrics
from r1ray.protocol import PromptBatch, assemble_rollout, concat_batches, select_rows


def _rollout(versions: list[int], lengths: list[int]) -> object:
    """One prompt, len(versions) samples; sample i has lengths[i] tokens stamped versions[i]."""
    prompts = PromptBatch(prompt_ids=[[1, 2]], ground_truths=["3"], data_sources=["arithmetic"], extra_infos=[{}],
                          indices=[7])
    n = len(versions)
    batch = assemble_rollout(prompts, n, [[5] * k for k in lengths], [torch.zeros(k) for k in lengths],
                             [False] * n, ["x"] * n)
    stamps = torch.tensor(versions)[:, None].expand(n, max(lengths)).clone()
    return replace(batch, token_versions=stamps)


def test_staleness_counts_valid_tokens_only() -> None:
    # Actor at version 5: two samples of version 4 (3 + 1 tokens) and one of version 5 (4 tokens); the
    # padding of the short rows carries their version but must not count.
    batch = _rollout([4, 5, 4], [3, 4, 1])
    got = staleness_metrics(batch, trained_version=5, max_staleness=2)
    assert got == pytest.approx({"async/staleness_mean": 4 / 8, "async/staleness_max": 1.0,
                                 "async/staleness_frac_0": 0.5, "async/staleness_frac_1": 0.5,
                                 "async/staleness_frac_2": 0.0})


def test_a_token_beyond_the_bound_is_never_trained_on() -> None:
    with pytest.raises(AssertionError, match=r"rollout tokens 0\.\.2 versions behind the actor \(version 5\); "
                                             r"trainer.max_staleness=1"):
        staleness_metrics(_rollout([3, 5], [2, 2]), trained_version=5, max_staleness=1)
    # A stamp from the future (an engine ahead of the actor) is a bug too.
    with pytest.raises(AssertionError):
        staleness_metrics(_rollout([6], [2]), trained_version=5, max_staleness=1)


def test_stamps_survive_selection_and_concatenation() -> None:
    a, b = _rollout([1, 2], [2, 3]), _rollout([3], [5])
    joined = concat_batches([select_rows(a, [1]), b])
    assert joined.token_versions.shape == (2, 5)
    assert joined.token_versions[:, 0].tolist() == [2, 3]


def test_a_checkpoint_carries_the_pending_batches(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path / "checkpoints", keep=2)
    pending = {3: ("prompts of step 3", _rollout([1, 1], [2, 3]))}
    # Version 1 at step 2: one step had no reward spread and took no update.
    state = TrainerState(step=2, sampler={"epoch": 0, "position": 6}, run_id="r", pending_steps=[3], version=1)
    path = manager.save(state, write_actor=lambda d: d.mkdir(), model_path="", config_yaml="", pending=pending)
    got_state, _ = read_checkpoint(path)
    assert got_state == state
    got = read_pending(path, got_state)
    assert list(got) == [3] and got[3][0] == "prompts of step 3"
    assert torch.equal(got[3][1].token_versions, pending[3][1].token_versions)
    assert "pending_rollouts.pt" in json.loads((path / "MANIFEST.json").read_text())   # size-checked on load
    # A checkpoint of a synchronous run (or one written before async existed) has none.
    sync = manager.save(TrainerState(4, {}, "r"), write_actor=lambda d: d.mkdir(), model_path="", config_yaml="")
    assert not (sync / "pending_rollouts.pt").exists() and read_pending(sync, read_checkpoint(sync)[0]) == {}
    # Old trainer_state.json files without the field still load.
    legacy = json.loads((sync / "trainer_state.json").read_text())
    legacy.pop("pending_steps")
    legacy.pop("version")
    assert TrainerState(**legacy).pending_steps == [] and TrainerState(**legacy).version == -1
