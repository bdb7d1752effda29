"""The Trainer with vLLM rollout engines on CPU, colocated with the actor: the wake / sync / generate / sleep
cycle of the rollout and the onload / offload cycle of the actor happen in the order the GPU recipe needs,
every step's sync (the "ipc" transport: shared memory) is fingerprint-verified, and the engines sample from the updated policy."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import ray
import torch

pytest.importorskip("vllm", reason="vLLM is not installed: pip install -e '.[cpu]' (CI installs it)")

from r1ray.controller.roles import sync_backend  # noqa: E402
from r1ray.workers.placement import Placement  # noqa: E402
from r1ray.controller.trainer import Trainer  # noqa: E402
from r1ray.models import build_tiny_model  # noqa: E402

pytestmark = pytest.mark.timeout(600)

COLOCATED = ["rollout.engine=vllm", "placement.pools.train.devices_per_node=1", "placement.rollout=train",
             "placement.ref=train", "algorithm.mini_batches=2", "rollout.max_prompt_length=48",
             # A random model earns no task reward; the length reward differs between samples, so GRPO has
             # advantages to train on.
             "reward.functions=[auto,format,still3_length]", "reward.weights=[1.0,0.1,0.1]"]
# Per colocated generation: wake the weights, receive the sync, wake the KV cache, generate, sleep.
ROLLOUT_CYCLE = ["wake:weights", "receive_weights", "wake:kv_cache", "generate", "sleep"]
# Per step: onload/offload around the sync's send, onload for old logprobs, the update, offload.
ACTOR_CYCLE = ["onload", "offload", "onload", "onload", "offload"]


@pytest.fixture(scope="module")
def vllm_run(ray_cluster, small_config, tmp_path_factory):
    """Two colocated vLLM steps of the Trainer, step by step: (config overrides, model, step metrics, the
    rollout and actor lifecycles, actor weights before and after)."""
    tmp = tmp_path_factory.mktemp("vllm_run")
    model = build_tiny_model(tmp / "model", hidden=64, layers=2, heads=2, kv_heads=1, max_position_embeddings=256)
    run = [f"model.path={model}", *COLOCATED, "trainer.total_steps=2", "trainer.save_every=1"]
    cfg = small_config(tmp / "out", *run)
    assert sync_backend(Placement.from_config(cfg.placement)) == "ipc"       # shared memory here, CUDA IPC on a GPU: NCCL refuses one device twice
    trainer = Trainer(cfg)
    trainer._build()
    try:
        initial = trainer.roles.actor.full_weights()
        metrics = [trainer.step(s) for s in (1, 2)]
        rollout = trainer.roles.rollout.lifecycle()[0]
        actor = trainer.roles.actor.lifecycle()
        final = trainer.roles.actor.full_weights()
    finally:
        trainer.roles.shutdown()
    return run, metrics, rollout, actor, initial, final


def test_colocated_vllm_steps_follow_the_cycle_and_train(vllm_run):
    _, metrics, rollout, actor, initial, final = vllm_run
    # vLLM started (and slept) before the actor loaded; the sync group was joined awake.
    assert rollout == ["setup", "sleep", "wake:weights"] + ROLLOUT_CYCLE * 2
    assert actor == [ACTOR_CYCLE * 2]                                          # one actor rank
    assert all(m["actor/grad_norm"] > 0 for m in metrics)
    assert any(not torch.equal(final[n], initial[n]) for n in initial)          # the policy moved
    # Step 2 sampled from the synced, updated weights: the actor's logprobs of those samples, before the
    # step's own updates, agree with vLLM's.
    assert metrics[1]["rollout/logprob_gap"] < 1e-3
    assert metrics[1]["timing_s/sync_weights"] > 0 and metrics[1]["timing_s/generate"] > 0


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (vLLM's engine core is one of the rollout worker's)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and f"PPid:\t{pid}\n" in (entry / "status").read_text():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in state


class RolloutKillingTrainer(Trainer):
    """Kills the vLLM rollout worker's process before step `at_step` generates, the first time only."""

    def __init__(self, cfg, at_step: int):
        super().__init__(cfg)
        self.at_step, self.started, self.killed = at_step, [], []

    def step(self, step):
        self.started.append(step)
        return super().step(step)

    def generate(self, prompts, sampling, timer=None):
        if not self.killed and self.started[-1] == self.at_step:
            pid = ray.get(self.roles.rollout.workers[0].pid.remote())
            self.killed = [pid, *_children(pid)]
            os.kill(pid, signal.SIGKILL)
        return super().generate(prompts, sampling, timer)


def _steps(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_killed_vllm_rollout_worker_is_restarted_and_the_run_matches_an_uninterrupted_one(
        vllm_run, small_config, tmp_path):
    run, straight, *_ = vllm_run
    trainer = RolloutKillingTrainer(small_config(tmp_path / "killed", *run, "trainer.max_restarts=1"), at_step=2)
    trainer.fit()
    assert trainer.started == [1, 2, 2]                      # step 2 again, from step 1's checkpoint
    # vLLM on a CPU pool with TP 1 runs in the worker's process: no engine-core or worker process under it
    # (those cost two more vLLM imports at every start and restart).
    assert len(trainer.killed) == 1, trainer.killed
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in trainer.killed) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in trainer.killed if _alive(p)]      # nothing of the dead engine kept running
    killed = _steps(tmp_path / "killed")
    assert [m["step"] for m in killed] == [1, 2]
    for want, got in zip(straight, killed):                  # the same steps as the uninterrupted run, bitwise
        for key in ("reward/mean", "actor/pg_loss", "actor/grad_norm", "response_length/mean"):
            assert got[key] == want[key], (got["step"], key)
