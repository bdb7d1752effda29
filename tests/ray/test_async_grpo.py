"""Asynchronous GRPO, fixed lag K = 1, with the real Trainer on the session cluster (HF rollout engine on
its own pool, two FSDP2 actor ranks, the off-policy path with old logprobs and truncated-IS correction).

One straight run is the reference. A second is the straight run stopped after step 2 (its later
checkpoints removed) and resumed, and its rollout worker is killed at the start of step 3, when step 4's
generation is due, so that it restarts from step 2's checkpoint once more. It must equal the straight run bit for bit: fixed lag
is a pure function of the seed, and a checkpoint carries the batch generated ahead of it.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import ray
import torch

from r1ray.controller.trainer import Trainer
from tests.ray.run_copies import stopped_after

pytestmark = pytest.mark.timeout(600)

ASYNC = ["data.prompts_per_step=2", "data.generate.train_size=4", "algorithm.mini_batches=2",
         "algorithm.ppo_epochs=2", "actor.lr_schedule=cosine", "actor.warmup_steps=2", "trainer.max_staleness=1",
         "algorithm.rollout_correction=tis_token", "trainer.total_steps=4", "trainer.save_every=1",
         "trainer.keep_checkpoints=4",
         # A random model earns no task reward; the length reward differs between samples, so GRPO has
         # advantages and the weights move (and the stale batches differ from the actor's policy).
         "reward.functions=[auto,format,still3_length]", "reward.weights=[1.0,0.1,0.1]"]
COMPARED = ("reward/mean", "actor/pg_loss", "actor/grad_norm", "actor/lr", "response_length/mean",
            "rollout/logprob_gap", "rollout_corr/kl_k3", "async/staleness_mean")


class AsyncTrainer(Trainer):
    """The real Trainer, recording the prompts each step was given, the versions stamped on what it
    trained, and the actor's weights at each checkpoint; `kill_at` kills the rollout worker's process at
    the start of that step, the first time only."""

    def __init__(self, cfg, kill_at: int | None = None):
        super().__init__(cfg)
        self.kill_at, self.killed = kill_at, False
        self.started: list[int] = []
        self.prompts_of: dict[int, list[int]] = {}
        self.saved_weights: dict[int, dict[str, torch.Tensor]] = {}

    def _prompts(self, step):
        prompts = super()._prompts(step)
        self.prompts_of[step] = list(prompts.indices)
        return prompts

    def step(self, step):
        self.started.append(step)
        if step == self.kill_at and not self.killed:
            self.killed = True
            os.kill(ray.get(self.roles.rollout.workers[0].pid.remote()), signal.SIGKILL)
        return super().step(step)

    def save(self, step):
        path = super().save(step)
        self.saved_weights[step] = self.roles.actor.full_weights()
        return path


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(ray_cluster, small_config, tmp_path_factory):
    straight_dir = tmp_path_factory.mktemp("straight")
    straight = AsyncTrainer(small_config(straight_dir, *ASYNC))
    straight.fit()

    stopped_dir = stopped_after(straight_dir, tmp_path_factory.mktemp("stopped") / "run", 2)
    resumed = AsyncTrainer(small_config(stopped_dir, *ASYNC, "trainer.resume=auto", "trainer.max_restarts=1"),
                           kill_at=3)
    resumed.fit()
    return {"straight": (straight, straight_dir), "resumed": (resumed, stopped_dir)}


def _assert_same_run(want_dir: Path, got_dir: Path, want: AsyncTrainer, got: AsyncTrainer) -> None:
    w, g = _metrics(want_dir), _metrics(got_dir)
    assert [m["step"] for m in g] == [1, 2, 3, 4]
    for a, b in zip(w, g):
        for key in COMPARED:
            assert b[key] == a[key], (b["step"], key)
    for name, tensor in want.saved_weights[4].items():
        assert torch.equal(got.saved_weights[4][name], tensor), name


def test_every_trained_token_is_exactly_one_version_old_after_the_first_step(runs):
    straight, out = runs["straight"]
    steps = _metrics(out)
    # Step 1 trains on the initial weights' batch (version 0, the actor at version 0); from step 2 on,
    # each batch came from the weights one step older than the actor that trains on it.
    assert [m["async/staleness_max"] for m in steps] == [0.0, 1.0, 1.0, 1.0]
    assert [m["async/staleness_frac_1"] for m in steps] == [0.0, 1.0, 1.0, 1.0]
    assert all(m["actor/grad_norm"] > 0 for m in steps)
    # The correction saw the stale batches: the rollout-vs-train KL is positive once the weights moved.
    assert all(m["rollout_corr/kl_k3"] > 0 for m in steps[1:]), [m["rollout_corr/kl_k3"] for m in steps]
    # The sampler gave out each step's prompts once, in order; the checkpoint after step s holds step
    # s+1's batch, generated before it.
    assert sorted(straight.prompts_of) == [1, 2, 3, 4]
    state = json.loads((out / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    assert state["pending_steps"] == [3]
    assert (out / "checkpoints" / "step_000002" / "pending_rollouts.pt").is_file()
    assert json.loads((out / "checkpoints" / "step_000004" / "trainer_state.json").read_text())["pending_steps"] == []


def test_a_stopped_run_resumes_and_restarts_a_killed_rollout_worker_bit_for_bit(runs):
    straight, straight_dir = runs["straight"]
    resumed, out = runs["resumed"]
    assert resumed.killed
    assert resumed.started == [3, 3, 4]          # step 3 again, after the restart from step 2's checkpoint
    # Step 3's batch came from step 2's checkpoint both times (no prompts drawn for it); step 4's prompts
    # were drawn once, after the restart (the dead engine failed the sync before any were): the straight run's.
    assert resumed.prompts_of == {4: straight.prompts_of[4]}
    _assert_same_run(straight_dir, out, straight, resumed)
