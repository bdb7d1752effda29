"""Trainer steps around the reward: dynamic sampling drops groups without reward spread before the reference
pass, which then runs once, on the groups that train; with KL at 0 no reference model is built at all; and a
reward that scores nothing stops the run, quoting its error."""

from __future__ import annotations

import pytest

from r1ray.controller.trainer import Trainer
from r1ray.rewards.spec import RewardFailure

pytestmark = pytest.mark.timeout(600)

# One actor rank and one reference rank: what these tests check happens in the controller, and each rank
# fewer is one worker process fewer to start.
ONE_RANK = "placement.pools.train.devices_per_node=1"
FILTERING = [ONE_RANK, "algorithm.dynamic_sampling=true", "algorithm.kl_placement=loss", "algorithm.kl_coef=0.01",
             "reward.functions=[tests.ray.rewards_for_tests:spread_on_even_answers]", "reward.weights=[1.0]",
             "trainer.seed=1"]


def test_dynamic_sampling_filters_groups_before_the_reference_pass(ray_cluster, small_config, tmp_path):
    cfg = small_config(tmp_path / "out", *FILTERING)
    trainer = Trainer(cfg)
    trainer._build()
    ref_passes = []                                                   # rows of each reference pass
    compute = trainer.roles.ref.compute_logprobs_async

    def observed(batch, temperature, token_budget=None):
        ref_passes.append(len(batch))
        return compute(batch, temperature, token_budget)

    trainer.roles.ref.compute_logprobs_async = observed               # the controller's calls, seen here
    try:
        metrics = trainer.step(1)
    finally:
        trainer.roles.shutdown()
    rounds = int(metrics["dynamic_sampling/rounds"])
    generated = rounds * cfg.data.prompts_per_step * cfg.rollout.n
    # Only groups with spread train: some were dropped, so more rows were generated than trained on.
    assert metrics["frac_reward_zero_std"] > 0
    assert len(ref_passes) == 1, ref_passes                           # one reference pass, after the rounds
    trained = ref_passes[0]
    assert 0 < trained < generated and trained % cfg.rollout.n == 0
    assert metrics["timing_s/ref_logprobs"] > 0 and metrics["actor/grad_norm"] > 0
    # The reference is the policy's starting weights: at the first, on-policy update they agree.
    assert metrics["actor/kl"] < 1e-6


def test_model_ref_path_loads_another_reference(ray_cluster, small_config, tmp_path):
    """model.ref_path: the reference is another checkpoint (here the tiny model built with another seed), so
    the KL at the very first update is no longer zero. The rollout engines share the reference's (and the
    actor's) devices: the reference leaves them once built and holds them only for its pass of a step."""
    from r1ray.models import build_tiny_model

    # The session's tiny model (tests/conftest.py TINY), from another seed.
    other = build_tiny_model(tmp_path / "other", hidden=32, layers=2, heads=4, kv_heads=2,
                             max_position_embeddings=256, seed=1)
    cfg = small_config(tmp_path / "out", *[o for o in FILTERING if "dynamic_sampling" not in o],
                       f"model.ref_path={other}", "placement.rollout=train")
    trainer = Trainer(cfg)
    trainer._build()
    try:
        metrics = trainer.step(1)
        ref = trainer.roles.ref.lifecycle()
    finally:
        trainer.roles.shutdown()
    assert metrics["actor/kl"] > 0.01 and metrics["actor/grad_norm"] > 0
    assert ref and all(rank == ["offload", "onload", "offload"] for rank in ref), ref   # per rank, one step


# A length schedule whose second stage the memory plan must fit with a smaller budget: eager attention
# keeps (heads, L, L) scores, so longer sequences cost more per token; 10 MiB is what this tiny model's
# plan fits at 512 tokens per micro-batch for 64-token sequences and at 256 for 248-token ones.
PLANNED = ["actor.micro_batch_tokens=0", "model.attn_implementation=eager", "rollout.max_response_length=200",
           "rollout.response_length_schedule=[[0,16],[1,200]]", "placement.pools.train.device_memory_gib=0.01"]


def test_no_reference_model_when_the_kl_coefficient_is_zero(ray_cluster, small_config, tmp_path):
    """No reference without KL; the same run, with `actor.micro_batch_tokens=0`, takes each step's micro-batch
    budget from the memory plan of its length stage (r1ray/memory_plan.py)."""
    from r1ray.memory_plan import model_shape, plan_memory

    cfg = small_config(tmp_path / "out", ONE_RANK, "algorithm.kl_placement=loss", "algorithm.kl_coef=0.0",
                       "reward.functions=[still3_length]", "reward.weights=[1.0]", *PLANNED)
    planned = [stage.budget for stage in plan_memory(cfg, model_shape(cfg)).stages]
    assert planned[0] > planned[1], planned                  # the longer stage fits fewer tokens
    trainer = Trainer(cfg)
    trainer._build()
    try:
        assert trainer.roles.ref is None
        metrics = [trainer.step(1), trainer.step(2)]
    finally:
        trainer.roles.shutdown()
    assert all(m["actor/grad_norm"] > 0 for m in metrics)
    assert [m["actor/micro_batch_tokens"] for m in metrics] == planned
    assert [m["response_length/budget"] for m in metrics] == [16, 200]


def test_a_reward_that_scores_nothing_stops_the_run_with_its_error(ray_cluster, small_config, tmp_path):
    cfg = small_config(tmp_path / "out", ONE_RANK, "reward.functions=[tests.ray.rewards_for_tests:always_raises]",
                       "reward.weights=[1.0]", "reward.max_failed_steps=2")
    trainer = Trainer(cfg)
    trainer._build()
    try:
        first = trainer.step(1)                                       # one failed step is tolerated
        with pytest.raises(RewardFailure) as info:
            trainer.step(2)
    finally:
        trainer.roles.shutdown()
    assert first["reward/error_count"] == cfg.data.prompts_per_step * cfg.rollout.n
    message = str(info.value)
    assert "\n" not in message and "in 2 step(s) in a row (steps 1-2)" in message
    assert "always_raises: KeyError: 'ground_truth_field'" in message
