"""Checkpoints and resume with the real Trainer on the session cluster.

One scenario covers the resume rules of docs/design.md §6: the dataset holds exactly two steps of prompts, so a
run stopped after step 2 stops exactly at an epoch boundary; resuming it to 4 steps must train steps 3 and
4 (not zero steps) on the same prompts, and reach the same weights, as the uninterrupted 4-step run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import ray
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from transformers import AutoModelForCausalLM

from r1ray.controller.checkpoint import CheckpointManager, TrainerState, read_checkpoint
from r1ray.controller.cli import main as cli_main
from r1ray.controller.trainer import Trainer
from r1ray.errors import WorkerFailure

pytestmark = pytest.mark.timeout(600)

PROMPTS_PER_STEP = 2
# Two epochs of two mini-batches per step: the off-policy path (old logprobs from the actor, PPO ratios
# away from 1) and an optimizer and LR scheduler that step several times between checkpoints.
RUN = [f"data.prompts_per_step={PROMPTS_PER_STEP}", f"data.generate.train_size={2 * PROMPTS_PER_STEP}",
       "algorithm.mini_batches=2", "algorithm.ppo_epochs=2", "actor.lr_schedule=cosine", "actor.warmup_steps=2"]
COMPARED = ("reward/mean", "actor/pg_loss", "actor/grad_norm", "actor/lr", "response_length/mean",
            "rollout/logprob_gap", "async/staleness_max")


class ObservedTrainer(Trainer):
    """The real Trainer, recording what it trains on (prompt indices per rollout) and the actor's full
    weights at every checkpoint."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.prompt_indices: list[list[int]] = []
        self.saved_weights: dict[int, dict[str, torch.Tensor]] = {}

    def generate(self, prompts, sampling, timer=None):
        self.prompt_indices.append(list(prompts.indices))
        return super().generate(prompts, sampling, timer)

    def save(self, step: int) -> Path:
        path = super().save(step)
        self.saved_weights[step] = self.roles.actor.full_weights()
        return path


def _fit(small_config, out: Path, *overrides: str) -> ObservedTrainer:
    trainer = ObservedTrainer(small_config(out, *RUN, *overrides))
    trainer.fit()
    return trainer


def _sampler_position(checkpoint: Path) -> tuple[int, int]:
    """(epoch, position) of the prompt sampler saved in a checkpoint (the first curriculum level's, the
    only one here)."""
    sampler = json.loads((checkpoint / "trainer_state.json").read_text())["sampler"]
    sampler = sampler["samplers"][0] if "samplers" in sampler else sampler
    return sampler["epoch"], sampler["position"]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(ray_cluster, small_config, tmp_path_factory):
    """An uninterrupted 4-step run, and the same run resumed after a crash just after step 2's checkpoint.

    The crash is staged from a copy of the full run: checkpoints 3 and 4 never happened, but metrics of
    steps 3 and 4 were logged (the resumed run must not count them twice) and the crash cut the next
    metrics line short; a checkpoint of step 9 died half-written and one of step 10 died before its rename
    (neither may be resumed from).
    """
    full_dir = tmp_path_factory.mktemp("full")
    every_step = ("trainer.total_steps=4", "trainer.save_every=1", "trainer.keep_checkpoints=4")
    full = _fit(small_config, full_dir, *every_step)
    split_dir = tmp_path_factory.mktemp("split") / "run"
    shutil.copytree(full_dir, split_dir)
    checkpoints = split_dir / "checkpoints"
    for name in ("step_000003", "step_000004"):
        shutil.rmtree(checkpoints / name)
    with (split_dir / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"step": 5, "reward/mean": 0.1')
    (checkpoints / "step_000009" / "actor").mkdir(parents=True)
    (checkpoints / ".tmp-step_000010").mkdir()
    (checkpoints / ".tmp-step_000010" / "COMPLETE").write_text("ok\n")
    # trainer.max_staleness=0 spelled out: asynchronous GRPO at K = 0 is the synchronous loop, bit for bit.
    resumed = _fit(small_config, split_dir, *every_step, "trainer.resume=auto", "trainer.max_staleness=0")
    return {"full": (full, full_dir), "resumed": (resumed, split_dir)}


def test_resume_continues_at_step_3_after_an_epoch_boundary(runs):
    full, _ = runs["full"]
    resumed, out = runs["resumed"]
    checkpoints = out / "checkpoints"
    assert _sampler_position(checkpoints / "step_000002") == (0, 4)      # step 2 ended epoch 0
    # The resumed run trained two steps (3 and 4), each on one batch of prompts, and saved both.
    assert len(resumed.prompt_indices) == 2
    assert sorted(resumed.saved_weights) == [3, 4]
    assert _sampler_position(checkpoints / "step_000003") == (1, 2)
    assert _sampler_position(checkpoints / "step_000004") == (1, 4)
    assert [m["step"] for m in _metrics(out)] == [1, 2, 3, 4]
    state = json.loads((checkpoints / "step_000004" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["run_id"] == full.run_id


def test_resumed_run_matches_the_uninterrupted_run(runs):
    full, full_dir = runs["full"]
    resumed, out = runs["resumed"]
    assert len(full.prompt_indices) == 4
    assert resumed.prompt_indices == full.prompt_indices[2:]
    # Each epoch covers the dataset once, in a new order.
    assert sorted(full.prompt_indices[0] + full.prompt_indices[1]) == [0, 1, 2, 3]
    assert sorted(full.prompt_indices[2] + full.prompt_indices[3]) == [0, 1, 2, 3]
    assert full.prompt_indices[:2] != full.prompt_indices[2:]
    full_state = json.loads((full_dir / "checkpoints" / "step_000004" / "trainer_state.json").read_text())
    split_state = json.loads((out / "checkpoints" / "step_000004" / "trainer_state.json").read_text())
    assert full_state["sampler"] == split_state["sampler"]
    assert len({m["actor/lr"] for m in _metrics(full_dir)}) == 4     # the LR schedule moves every step
    # Weights, optimizer, LR scheduler, sampler and RNG came back: the resumed steps are the uninterrupted
    # ones bit for bit (the same kernels and thread counts on the same machine; docs/reliability.md).
    _assert_same_steps(_metrics(full_dir), _metrics(out))
    _assert_same_weights(full.saved_weights[4], resumed.saved_weights[4])


def _assert_same_steps(want: list[dict], got: list[dict]) -> None:
    assert [m["step"] for m in got] == [m["step"] for m in want]
    for w, g in zip(want, got):
        for key in COMPARED:
            assert g[key] == w[key], (g["step"], key)


def _assert_same_weights(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name


def test_incomplete_checkpoints_are_never_loaded(runs):
    _, out = runs["resumed"]
    manager = CheckpointManager(out / "checkpoints", keep=2)
    # step_000009 has no COMPLETE; the stale .tmp- directory was cleaned up by the next save.
    assert manager.latest() == out / "checkpoints" / "step_000004"
    assert [p.name for p in manager.complete()] == ["step_000001", "step_000002", "step_000003", "step_000004"]
    assert not (out / "checkpoints" / ".tmp-step_000010").exists()
    with pytest.raises(FileNotFoundError, match="no COMPLETE marker"):
        read_checkpoint(out / "checkpoints" / "step_000009")


def test_latest_ignores_incomplete_and_temporary_directories(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    assert manager.latest() is None
    for name, complete in (("step_000001", True), ("step_000002", True), ("step_000003", False),
                           (".tmp-step_000004", True), ("step_5", True)):
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "COMPLETE").write_text("ok\n")
    assert manager.latest() == tmp_path / "step_000002"
    written = manager.save(TrainerState(step=6, sampler={"epoch": 0, "position": 2}, run_id="r"),
                           write_actor=lambda d: d.mkdir(), model_path=str(tmp_path / "none"), config_yaml="x: 1\n")
    assert written == tmp_path / "step_000006" and manager.latest() == written
    # Only the newest `keep` complete checkpoints stay; temporary leftovers go, incomplete ones are left alone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000002", "step_000003", "step_000006", "step_5"]


def test_export_writes_the_checkpointed_actor_as_a_hugging_face_model(runs, tmp_path, capsys):
    resumed, out = runs["resumed"]
    checkpoint = out / "checkpoints" / "step_000004"
    assert cli_main(["export", str(checkpoint), "--out", str(tmp_path / "hf")]) == 0
    assert "wrote a Hugging Face model" in capsys.readouterr().out
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    exported = model.state_dict()
    actor = resumed.saved_weights[4]
    assert sorted(exported) == sorted(actor)
    for name, tensor in actor.items():
        assert torch.equal(exported[name], tensor), name
    # And the shards on disk hold the same tensors, read back without the export code.
    dcp_to_torch_save(checkpoint / "actor" / "engine", tmp_path / "engine.pt")
    on_disk = torch.load(tmp_path / "engine.pt", weights_only=False)["model"]
    for name, tensor in actor.items():
        assert torch.equal(on_disk[name], tensor), name
    assert cli_main(["export", str(out / "checkpoints" / "step_000009"), "--out", str(tmp_path / "bad")]) == 2
    assert "no COMPLETE marker" in capsys.readouterr().err


# ---- worker failure and restart --------------------------------------------------------------------------

class KillingTrainer(ObservedTrainer):
    """The observed Trainer, SIGKILLing a worker's process the first time step `at_step` reaches `phase`
    ("generate": before the rollout call; "update": before the actor's update), for each (role, rank,
    at_step, phase) it is given; it records every step it starts and the prompts each finished step trained on."""

    def __init__(self, cfg, *kills: tuple[str, int, int, str]):
        super().__init__(cfg)
        self.kills = list(kills)
        self.killed_pids: list[int] = []
        self.started: list[int] = []
        self.trained: dict[int, list[int]] = {}

    def step(self, step: int):
        self.started.append(step)
        metrics = super().step(step)
        self.trained[step] = self.prompt_indices[-1]
        return metrics

    def _maybe_kill(self, phase: str) -> None:
        for kill in list(self.kills):
            role, rank, at_step, when = kill
            if phase == when and self.started[-1] == at_step:
                self.kills.remove(kill)
                self.killed_pids.append(ray.get(getattr(self.roles, role).workers[rank].pid.remote()))
                os.kill(self.killed_pids[-1], signal.SIGKILL)

    def generate(self, prompts, sampling, timer=None):
        self._maybe_kill("generate")
        return super().generate(prompts, sampling, timer)

    def update(self, batch, kl_coef):
        self._maybe_kill("update")
        return super().update(batch, kl_coef)


def _fit_killing(small_config, out: Path, kills: list[tuple], *overrides: str) -> KillingTrainer:
    trainer = KillingTrainer(small_config(out, *RUN, "trainer.total_steps=4", *overrides), *kills)
    trainer.fit()
    return trainer


def test_killed_workers_are_restarted_and_the_run_neither_repeats_nor_skips_data(runs, small_config, tmp_path):
    """Two failures in one run (trainer.max_restarts=2): the rollout worker before any checkpoint (the run
    starts again from its beginning), then an FSDP actor rank mid-step 3 (from step 2's checkpoint)."""
    full, full_dir = runs["full"]
    out = tmp_path / "run"
    kills = [("rollout", 0, 1, "generate"), ("actor", 1, 3, "update")]
    trainer = _fit_killing(small_config, out, kills, "trainer.max_restarts=2", "trainer.save_every=2")
    assert len(trainer.killed_pids) == 2 and not trainer.kills
    assert trainer.started == [1, 1, 2, 3, 3, 4]
    # Each step trained once on the prompts the uninterrupted run trained it on ...
    assert [trainer.trained[s] for s in range(1, 5)] == full.prompt_indices
    # ... with the same results, bit for bit, logged once per step, to the same final weights.
    _assert_same_steps(_metrics(full_dir), _metrics(out))
    _assert_same_weights(full.saved_weights[4], trainer.saved_weights[4])
    state = json.loads((out / "checkpoints" / "step_000004" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["run_id"] == trainer.run_id


def test_without_restarts_a_killed_worker_ends_the_run_naming_it(small_config, tmp_path):
    with pytest.raises(WorkerFailure) as failure:
        _fit_killing(small_config, tmp_path / "run", [("rollout", 0, 2, "generate")], "trainer.max_restarts=0")
    message = str(failure.value)
    assert "\n" not in message
    assert message.startswith("role 'rollout' rank 0: the worker process died (")
    assert message.endswith("trainer.max_restarts=0: set it above 0 to restart the workers from the newest checkpoint")
    assert [m["step"] for m in _metrics(tmp_path / "run")] == [1]


def test_a_restart_after_a_failed_start_places_the_groups_again(small_config, tmp_path, caplog, new_placement_groups):
    """trainer.startup_timeout_s=1: no torch worker is up within a second, so the start fails, and so does its
    restart. The restart gets as far as the first start: the failed start freed its placement groups (a
    restart used to die on their names, "placement group 'r1ray-gen-0' already exists", with a traceback).
    The run ends with one line naming the late roles, and nothing stays reserved."""
    with pytest.raises(WorkerFailure) as failure:
        Trainer(small_config(tmp_path / "run", "trainer.startup_timeout_s=1", "trainer.max_restarts=1")).fit()
    message = str(failure.value)
    assert "\n" not in message and "did not finish ping within 1s" in message, message
    assert message.endswith("gave up after 1 restart(s)"), message
    restarts = [r.getMessage() for r in caplog.records if "restart 1 of 1 from the run's start" in r.getMessage()]
    assert len(restarts) == 1 and "did not finish ping within 1s" in restarts[0], restarts
    assert new_placement_groups() == []
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_run_resumed_at_its_last_step_says_there_is_nothing_to_do(runs, small_config, tmp_path):
    from r1ray.errors import NothingToDo

    _, full_dir = runs["full"]
    out = tmp_path / "done"
    shutil.copytree(full_dir, out)
    before = (out / "metrics.jsonl").read_text()
    trainer = Trainer(small_config(out, *RUN, "trainer.total_steps=4", "trainer.resume=auto"))
    with pytest.raises(NothingToDo, match=rf"^{out}: the run is already at step 4 of trainer.total_steps=4; nothing "
                                          rf"was trained \(raise trainer.total_steps to continue it\)$"):
        trainer.fit()
    assert trainer.roles is None                          # refused before any worker started
    assert (out / "metrics.jsonl").read_text() == before
