"""The Trainer with vLLM rollout engines on CPU, colocated with the actor: the wake / sync / generate / sleep
cycle of the rollout and the onload / offload cycle of the actor happen in the order the GPU recipe needs,
every step's sync (the "ipc" transport: shared memory) is fingerprint-verified, and the engines sample from the updated policy."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed: pip install -e '.[cpu]' (CI installs it)")

from r1ray.controller.roles import sync_backend  # noqa: E402
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


def test_colocated_vllm_steps_follow_the_cycle_and_train(ray_cluster, small_config, tmp_path):
    model = build_tiny_model(tmp_path / "model", hidden=64, layers=2, heads=2, kv_heads=1, max_position_embeddings=256)
    cfg = small_config(tmp_path / "out", f"model.path={model}", *COLOCATED)
    assert sync_backend(cfg) == "ipc"       # shared memory here, CUDA IPC on a GPU: NCCL refuses one device twice
    trainer = Trainer(cfg)
    trainer._build()
    try:
        initial = trainer.roles.actor.full_weights()
        metrics = [trainer.step(s) for s in (1, 2)]
        rollout = trainer.roles.rollout.lifecycle()[0]
        actor = trainer.roles.actor.call("lifecycle")
        final = trainer.roles.actor.full_weights()
    finally:
        trainer.roles.shutdown()
    # vLLM started (and slept) before the actor loaded; the sync group was joined awake.
    assert rollout == ["setup", "sleep", "wake:weights"] + ROLLOUT_CYCLE * 2
    assert actor == [ACTOR_CYCLE * 2]                                          # one actor rank
    assert all(m["actor/grad_norm"] > 0 for m in metrics)
    assert any(not torch.equal(final[n], initial[n]) for n in initial)          # the policy moved
    # Step 2 sampled from the synced, updated weights: the actor's logprobs of those samples, before the
    # step's own updates, agree with vLLM's.
    assert metrics[1]["rollout/old_logprob_gap"] < 1e-3
    assert metrics[1]["timing_s/sync_weights"] > 0 and metrics[1]["timing_s/generate"] > 0
