"""DAPO dynamic sampling and overlong handling against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from r1ray.algos import dynamic_sampling_filter, overlong_loss_mask, overlong_reward_shaping

NAN = float("nan")


def test_dynamic_sampling_drops_zero_spread_groups() -> None:
    # groups: [1, 0] kept; [1, 1] all equal; [NaN, NaN] nothing scorable; [NaN, 0] a single value
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, NAN, NAN, NAN, 0.0])
    keep, frac_zero_std = dynamic_sampling_filter(rewards, 2)
    assert keep.dtype == torch.bool
    assert keep.tolist() == [True, True, False, False, False, False, False, False]
    assert frac_zero_std == pytest.approx(3 / 4)


def test_dynamic_sampling_keeps_groups_with_nan_but_spread() -> None:
    rewards = torch.tensor([NAN, 1.0, 0.0, 0.0, 0.0, 0.0])
    keep, frac_zero_std = dynamic_sampling_filter(rewards, 3)
    assert keep.tolist() == [True, True, True, False, False, False]
    assert frac_zero_std == pytest.approx(0.5)
    empty_keep, empty_frac = dynamic_sampling_filter(torch.zeros(0), 4)
    assert empty_keep.shape == (0,) and empty_frac == 0.0


def test_overlong_reward_shaping_ramp() -> None:
    # L_max = 10, L_cache = 4 -> ramp starts after 6: (6 - L) / 4 * 2
    # L = 1 -> 0; 6 -> 0; 7 -> -0.5; 8 -> -1.0; 10 -> -2.0; 12 -> clamped -2.0
    lengths = torch.tensor([1, 6, 7, 8, 10, 12])
    penalty = overlong_reward_shaping(lengths, 10, 4, 2.0)
    assert penalty.dtype == torch.float32
    torch.testing.assert_close(penalty, torch.tensor([0.0, 0.0, -0.5, -1.0, -2.0, -2.0]))


def test_overlong_reward_shaping_zero_buffer_and_validation() -> None:
    penalty = overlong_reward_shaping(torch.tensor([9, 10, 11]), 10, 0, 1.0)
    torch.testing.assert_close(penalty, torch.tensor([0.0, 0.0, -1.0]))
    with pytest.raises(ValueError, match="buffer_len"):
        overlong_reward_shaping(torch.tensor([1]), 10, 11, 1.0)
    with pytest.raises(ValueError, match="penalty_factor"):
        overlong_reward_shaping(torch.tensor([1]), 10, 2, -1.0)


def test_overlong_loss_mask_zeroes_truncated_rows() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    truncated = torch.tensor([False, True, False])
    filtered = overlong_loss_mask(mask, truncated)
    assert filtered.dtype == mask.dtype
    torch.testing.assert_close(filtered, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    bool_mask = overlong_loss_mask(mask.bool(), truncated)
    assert bool_mask.dtype == torch.bool and bool_mask.sum().item() == 3
    with pytest.raises(ValueError, match="truncated"):
        overlong_loss_mask(mask, torch.tensor([True]))
