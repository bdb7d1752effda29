"""The FSDP2 engine on 2 gloo ranks: gradient accumulation over token-budget micro-batches is exact, and
the logprob pass (padded or packed) agrees with the sampler's logprobs of the same tokens."""

from __future__ import annotations

import math

import pytest
import ray
import torch

from r1ray.protocol import split_batch

pytestmark = pytest.mark.timeout(300)

# Tokens per micro-batch: under one sequence (prompt 33 + response <= 16 tokens), so every sequence gets a
# micro-batch of its own, and a rank whose rows are fewer than the agreed count runs an empty one.
SMALL_BUDGET = 40


def test_packed_logprobs_match_the_samplers(actor_rollout):
    """Sequences packed into one row must not attend to each other: the actor's logprobs of the sampled
    tokens equal the rollout engine's, computed one padded sequence at a time during generation."""
    gaps = [m["rollout/logprob_gap"] for m in actor_rollout.update_metrics]
    assert all(gap < 1e-5 for gap in gaps), gaps


def test_many_micro_batches_give_the_same_update_as_one(actor_rollout):
    """ActorLoss weights each micro-batch by its share of the mini-batch's tokens (docs/design.md §3: equivalent
    configurations give the same loss): one micro-batch per rank and one per sequence must take the same step."""
    ar = actor_rollout
    batch = ar.batch
    parts = split_batch(batch, 2)
    assert all(math.ceil(int(p.seq_lens.sum()) / ar.cfg.actor.micro_batch_tokens) == 1 for p in parts)
    assert all(math.ceil(int(p.seq_lens.sum()) / SMALL_BUDGET) >= len(p) for p in parts)

    small = ar.start_actor(micro_batch_tokens=SMALL_BUDGET)
    try:
        before = small.full_weights()
        for name, tensor in ar.initial.items():
            assert torch.equal(before[name], tensor), name
        # The no-grad logprob pass is micro-batched too; it must not depend on the cut either.
        logprobs = torch.cat(ray.get(small.compute_logprobs_async(batch, 1.0)))
        mask = batch.response_mask.bool()
        assert torch.allclose(logprobs[mask], batch.rollout_logprobs[mask], atol=1e-5)

        metrics = ray.get(small.update_async(batch, temperature=1.0, kl_coef=0.0, mini_batches=1, ppo_epochs=1))
        after = small.full_weights()
    finally:
        ar.stop(small)
    _assert_the_reference_step(ar, metrics, after)


def _assert_the_reference_step(ar, metrics: list[dict], after: dict) -> None:
    """`metrics` and `after` are the fixture's update of `ar.batch` (up to float32 rounding)."""
    # The gradient norm is taken before the (scale-invariant) Adam step, so it is the sharp check.
    for got, want in zip(metrics, ar.update_metrics):
        assert got["actor/grad_norm"] == pytest.approx(want["actor/grad_norm"], rel=1e-5)
    # Adam's first step moves each weight by lr * g / (|g| + eps): about lr * sign(g), so a mis-weighted
    # micro-batch flips signs and moves weights by up to 2 * lr. Only weights whose gradient is near eps
    # may differ by float rounding of the accumulation order (seen: one element of 60k, by 1e-6).
    lr = ar.cfg.actor.lr
    close = 0
    for name, tensor in ar.updated.items():
        assert torch.allclose(after[name], tensor, rtol=0, atol=lr / 10), name
        close += int(((after[name] - tensor).abs() <= 1e-7).sum())
    assert close >= sum(t.numel() for t in ar.updated.values()) - 10


def test_packed_and_padded_micro_batches_give_the_same_logprobs_and_update(actor_rollout):
    """The default on CPU (sdpa) is padded micro-batches; a packed engine (one row per micro-batch, as with
    flash-attention varlen) must compute the same logprobs and take the same optimizer step."""
    ar = actor_rollout
    logprobs, metrics, after = _logprobs_and_update(ar, padding_free="on")
    mask = ar.batch.response_mask.bool()
    assert torch.allclose(logprobs[mask], ar.batch.rollout_logprobs[mask], atol=1e-5)
    _assert_the_reference_step(ar, metrics, after)


def _logprobs_and_update(ar, **spec_changes) -> tuple[torch.Tensor, list[dict], dict]:
    """A new actor group with the spec changed: its logprobs of the fixture's batch, then its update on
    it (per-rank metrics, full weights after)."""
    group = ar.start_actor(**spec_changes)
    try:
        logprobs = torch.cat(ray.get(group.compute_logprobs_async(ar.batch, 1.0)))
        metrics = ray.get(group.update_async(ar.batch, temperature=1.0, kl_coef=0.0, mini_batches=1, ppo_epochs=1))
        return logprobs, metrics, group.full_weights()
    finally:
        ar.stop(group)


def test_a_non_finite_loss_skips_the_step_and_leaves_the_weights(actor_rollout):
    """NaN advantages make the loss and every gradient NaN: the engine skips the optimizer step (counted in
    actor/skipped_steps) and the weights stay as they were, instead of turning to NaN."""
    from dataclasses import replace

    ar = actor_rollout
    group = ar.start_actor()
    try:
        before = group.full_weights()
        poisoned = replace(ar.batch, advantages=torch.full_like(ar.batch.advantages, float("nan")))
        bad = ray.get(group.update_async(poisoned, temperature=1.0, kl_coef=0.0, mini_batches=1, ppo_epochs=1))
        after_bad = group.full_weights()
        good = ray.get(group.update_async(ar.batch, temperature=1.0, kl_coef=0.0, mini_batches=1, ppo_epochs=1))
    finally:
        ar.stop(group)
    assert all(m["actor/skipped_steps"] == 1.0 and not math.isfinite(m["actor/grad_norm"]) for m in bad)
    assert all(torch.equal(after_bad[name], tensor) for name, tensor in before.items())
    assert all(m["actor/skipped_steps"] == 0.0 and math.isfinite(m["actor/grad_norm"]) for m in good)


def test_sequence_parallel_2_takes_the_step_of_1(actor_rollout):
    """`sequence_parallel_size=2` on the same 2 ranks: the ranks gather their rows and split every sequence
    between them (Ulysses). With activation checkpointing (the backward recomputes each layer, all-to-alls
    included) and a small per-rank budget (several micro-batches of the union), the logprobs and the
    optimizer step are those of the default engine, up to float32 rounding of the split projections."""
    ar = actor_rollout
    logprobs, metrics, after = _logprobs_and_update(ar, sequence_parallel_size=2, gradient_checkpointing=True,
                                                    micro_batch_tokens=SMALL_BUDGET)
    mask = ar.batch.response_mask.bool()
    assert logprobs.shape == mask.shape                          # each rank returned its own rows only
    assert torch.allclose(logprobs[mask], ar.batch.rollout_logprobs[mask], atol=1e-5)
    assert all(m["rollout/logprob_gap"] < 1e-5 and m["actor/sequence_parallel_size"] == 2.0 for m in metrics)
    _assert_the_reference_step(ar, metrics, after)
