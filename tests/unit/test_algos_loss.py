"""Policy loss, loss aggregation, masked mean and entropy: hand-computed values and invariants."""

from __future__ import annotations

import math

import pytest
import torch

from r1ray.algos import LOSS_AGGREGATIONS, aggregate_loss, masked_mean, policy_loss


def _logprobs_for_ratios(ratios: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (logprobs as a leaf needing grad, old_logprobs = 0) such that exp(logp - old) = ratios."""
    logprobs = torch.tensor(ratios).log().requires_grad_(True)
    return logprobs, torch.zeros_like(logprobs)


# ---- aggregate_loss / masked_mean --------------------------------------------------------------

_LOSS_MAT = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize(
    ("agg", "norm_len", "expected"),
    [
        # (1 + 2 + 3 + 4 + 5 + 6) / 6 valid tokens = 3.5
        ("token-mean", None, 3.5),
        # row means 10 / 4 = 2.5 and 11 / 2 = 5.5; the empty row is left out -> 4.0
        ("seq-mean-token-mean", None, 4.0),
        # row sums / T = 10 / 4 = 2.5 and 11 / 4 = 2.75 -> 2.625
        ("seq-mean-token-sum-norm", None, 2.625),
        # row sums / 8 = 1.25 and 1.375 -> 1.3125
        ("seq-mean-token-sum-norm", 8, 1.3125),
    ],
)
def test_aggregate_loss_hand_computed(agg: str, norm_len: int | None, expected: float) -> None:
    assert aggregate_loss(_LOSS_MAT, _MASK, agg, norm_len=norm_len).item() == pytest.approx(expected)


def test_aggregate_loss_empty_mask_and_errors() -> None:
    loss_mat = torch.full((2, 3), float("nan")).requires_grad_(True)
    for agg in LOSS_AGGREGATIONS:
        loss = aggregate_loss(loss_mat, torch.zeros(2, 3), agg)
        assert loss.item() == 0.0
        loss.backward()
        assert torch.equal(loss_mat.grad, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="token-mean, seq-mean-token-mean"):
        aggregate_loss(_LOSS_MAT, _MASK, "sum")
    with pytest.raises(ValueError, match="norm_len"):
        aggregate_loss(_LOSS_MAT, _MASK, "seq-mean-token-sum-norm", norm_len=0)
    with pytest.raises(ValueError, match="shape"):
        aggregate_loss(_LOSS_MAT, _MASK[:1], "token-mean")


def test_masked_mean() -> None:
    x = torch.tensor([[1.0, float("nan")], [3.0, 4.0], [float("inf"), 2.0]])
    mask = torch.tensor([[True, False], [True, True], [False, False]])
    # all: (1 + 3 + 4) / 3 = 8/3; per row: [1, 3.5, empty -> 0]
    assert masked_mean(x, mask).item() == pytest.approx(8 / 3)
    torch.testing.assert_close(masked_mean(x, mask, dim=1), torch.tensor([1.0, 3.5, 0.0]))
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0
    assert masked_mean(x.bfloat16(), mask).dtype == torch.bfloat16


def test_token_mean_equals_weighted_halves() -> None:
    generator = torch.Generator().manual_seed(1)
    loss_mat = torch.randn(4, 6, generator=generator)
    # halves (rows 0-1 and rows 2-3) both hold 7 valid tokens, in different layouts
    mask = torch.tensor(
        [[1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool
    )
    full = aggregate_loss(loss_mat, mask, "token-mean")
    first = aggregate_loss(loss_mat[:2], mask[:2], "token-mean")
    second = aggregate_loss(loss_mat[2:], mask[2:], "token-mean")
    torch.testing.assert_close(full, (first + second) / 2)


def test_seq_mean_token_mean_invariant_to_right_padding() -> None:
    generator = torch.Generator().manual_seed(2)
    loss_mat = torch.randn(3, 5, generator=generator)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    padded_loss = torch.cat([loss_mat, torch.full((3, 4), 123.0)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(3, 4, dtype=mask.dtype)], dim=1)
    for agg, norm_len in (("seq-mean-token-mean", None), ("seq-mean-token-sum-norm", 16), ("token-mean", None)):
        torch.testing.assert_close(
            aggregate_loss(loss_mat, mask, agg, norm_len=norm_len),
            aggregate_loss(padded_loss, padded_mask, agg, norm_len=norm_len),
        )


# ---- policy_loss -------------------------------------------------------------------------------


def test_clip_higher_asymmetry() -> None:
    # ratio 1.25 with A = +1: clip_high 0.28 -> 1.25 < 1.28, not clipped, loss = -1.25, grad = -A * ratio = -1.25
    logprobs, old = _logprobs_for_ratios([[1.25]])
    loss, metrics = policy_loss(logprobs, old, torch.tensor([1.0]), torch.ones(1, 1), clip_high=0.28)
    assert loss.item() == pytest.approx(-1.25)
    assert metrics["pg_clipfrac"] == 0.0
    loss.backward()
    assert logprobs.grad.item() == pytest.approx(-1.25)
    # clip_high 0.2 -> ratio clipped to 1.2: loss = max(-1.25, -1.2) = -1.2, no gradient
    logprobs, old = _logprobs_for_ratios([[1.25]])
    loss, metrics = policy_loss(logprobs, old, torch.tensor([1.0]), torch.ones(1, 1), clip_high=0.2)
    assert loss.item() == pytest.approx(-1.2)
    assert metrics["pg_clipfrac"] == 1.0
    loss.backward()
    assert logprobs.grad.item() == 0.0


def test_dual_clip_hand_computed() -> None:
    # ratios [5, 2, 5, 0.5], advantages [-1, -1, +1, -1], clip 0.2 -> clip range [0.8, 1.2]
    # per token max(-A r, -A clip(r)): [max(5, 1.2), max(2, 1.2), max(-5, -1.2), max(0.5, 0.8)] = [5, 2, -1.2, 0.8]
    # ratio clip active on tokens 3 and 4 -> pg_clipfrac 0.5; token-mean = 6.6 / 4 = 1.65
    # dual clip c = 3 caps A < 0 losses at 3: [3, 2, -1.2, 0.8] -> 4.6 / 4 = 1.15, pg_clipfrac_lower 0.25
    # ppo_kl = mean(old - logp) = -(ln 5 + ln 2 + ln 5 + ln 0.5) / 4 = -ln(25) / 4 = -0.804719
    logprobs, old = _logprobs_for_ratios([[5.0, 2.0, 5.0, 0.5]])
    advantages = torch.tensor([[-1.0, -1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, metrics = policy_loss(logprobs, old, advantages, mask)
    assert loss.item() == pytest.approx(1.65)
    assert metrics["pg_clipfrac"] == pytest.approx(0.5)
    assert metrics["pg_clipfrac_lower"] == 0.0
    assert metrics["ppo_kl"] == pytest.approx(-math.log(25) / 4)
    loss, metrics = policy_loss(logprobs, old, advantages, mask, dual_clip=3.0)
    assert loss.item() == pytest.approx(1.15)
    expected_metrics = {"pg_loss": 1.15, "pg_clipfrac": 0.5, "pg_clipfrac_lower": 0.25, "ppo_kl": -0.804719}
    assert metrics == pytest.approx(expected_metrics)
    loss.backward()
    # only token 2 (unclipped, A = -1, ratio 2) has a gradient: d(-A r)/d logp = r = 2, divided by 4 tokens
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, 0.5, 0.0, 0.0]]))


@pytest.mark.parametrize(
    ("agg", "expected"),
    [
        # per-token losses -A * r with r = 1 (on-policy): row 0 = [-1, -1, -1], row 1 = [2, padding], row 2 empty
        # token-mean: (-3 + 2) / 4 = -0.25
        ("token-mean", -0.25),
        # row means -1 and 2 -> 0.5
        ("seq-mean-token-mean", 0.5),
        # row sums / T = -3 / 3 and 2 / 3 -> (-1 + 0.666667) / 2 = -0.166667
        ("seq-mean-token-sum-norm", -1 / 6),
    ],
)
def test_policy_loss_aggregations_with_empty_row(agg: str, expected: float) -> None:
    logprobs = torch.tensor([[-0.5, -1.0, -2.0], [-0.3, float("-inf"), float("nan")], [float("nan")] * 3])
    logprobs.requires_grad_(True)
    advantages = torch.tensor([1.0, -2.0, 5.0])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    loss, _ = policy_loss(logprobs, logprobs.detach(), advantages, mask, agg=agg)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert torch.isfinite(logprobs.grad).all()
    assert torch.equal(logprobs.grad[2], torch.zeros(3))


def test_policy_loss_empty_batch_is_zero_with_grad() -> None:
    logprobs = torch.randn(2, 3).requires_grad_(True)
    loss, metrics = policy_loss(logprobs, torch.zeros(2, 3), torch.ones(2), torch.zeros(2, 3))
    assert loss.item() == 0.0
    assert metrics == {"pg_loss": 0.0, "pg_clipfrac": 0.0, "pg_clipfrac_lower": 0.0, "ppo_kl": 0.0}
    loss.backward()
    assert torch.equal(logprobs.grad, torch.zeros(2, 3))


def test_policy_loss_sequence_advantages_broadcast_and_bf16() -> None:
    generator = torch.Generator().manual_seed(3)
    logprobs = -torch.rand(3, 4, generator=generator)
    old = logprobs + 0.3 * torch.randn(3, 4, generator=generator)
    advantages = torch.tensor([0.5, -1.0, 2.0])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    per_seq, _ = policy_loss(logprobs, old, advantages, mask, clip_high=0.28, dual_clip=3.0)
    per_token, _ = policy_loss(logprobs, old, advantages[:, None].expand(3, 4), mask, clip_high=0.28, dual_clip=3.0)
    torch.testing.assert_close(per_seq, per_token)
    half = logprobs.bfloat16().requires_grad_(True)
    loss, metrics = policy_loss(half, old.bfloat16(), advantages, mask)
    assert loss.dtype == torch.bfloat16 and isinstance(metrics["pg_loss"], float)
    loss.backward()
    assert half.grad.dtype == torch.bfloat16 and torch.isfinite(half.grad.float()).all()


def test_policy_loss_rejects_bad_arguments() -> None:
    ones = torch.ones(2, 3)
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(ones, ones, torch.ones(2), ones, dual_clip=1.0)
    with pytest.raises(ValueError, match="clip_low"):
        policy_loss(ones, ones, torch.ones(2), ones, clip_low=1.0)
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(ones, ones, torch.ones(3), ones)
    with pytest.raises(ValueError, match="share one"):
        policy_loss(ones, ones[:1], torch.ones(2), ones)
    with pytest.raises(ValueError, match="valid names"):
        policy_loss(ones, ones, torch.ones(2), ones, agg="sum")

