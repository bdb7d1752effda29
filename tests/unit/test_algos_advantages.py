"""Advantage estimators against hand-computed values, and their edge cases (NaN, equal rewards)."""

from __future__ import annotations

import pytest
import torch

from r1ray.algos import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    grpo_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
)

NAN = float("nan")


def _close(actual: torch.Tensor, expected: list[float], atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# ---- GRPO / Dr. GRPO ---------------------------------------------------------------------------


def test_grpo_hand_computed_two_groups() -> None:
    # group 1 = [1, 0, 1, 0]: mean 0.5, sample var = 4 * 0.25 / 3 = 1/3, std = 0.57735
    #   -> +-0.5 / 0.57735 = +-0.866025
    # group 2 = [3, 1, 2, 2]: mean 2, sample var = (1 + 1 + 0 + 0) / 3 = 2/3, std = 0.816497
    #   -> [1, -1, 0, 0] / 0.816497 = [1.224745, -1.224745, 0, 0]
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 3.0, 1.0, 2.0, 2.0])
    advantages = grpo_advantages(rewards, 4, eps=0.0)
    _close(advantages, [0.866025, -0.866025, 0.866025, -0.866025, 1.224745, -1.224745, 0.0, 0.0])


def test_grpo_matches_torch_std_unbiased() -> None:
    rewards = torch.tensor([0.3, 1.7, -0.4, 2.2, 0.9, 0.1])
    grouped = rewards.view(2, 3)
    expected = (grouped - grouped.mean(-1, keepdim=True)) / (grouped.std(-1, keepdim=True) + 1e-6)
    torch.testing.assert_close(grpo_advantages(rewards, 3), expected.reshape(-1))


def test_grpo_group_of_two() -> None:
    # [1, 0]: mean 0.5, sample std = sqrt((0.25 + 0.25) / 1) = 0.707107 -> +-0.5 / 0.707107 = +-0.707107
    _close(grpo_advantages(torch.tensor([1.0, 0.0]), 2, eps=0.0), [0.707107, -0.707107])


def test_grpo_equal_rewards_give_zero_even_with_rounding() -> None:
    # 0.1 cannot be represented exactly; the float mean of [0.1] * 3 may differ by one ulp, which
    # divided by eps would be a spurious advantage. Equal groups must be exactly zero.
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 1.0, 1.0])
    assert torch.equal(grpo_advantages(rewards, 3), torch.zeros(6))
    assert torch.equal(grpo_advantages(rewards, 3, normalize_std=False), torch.zeros(6))


def test_grpo_nan_rewards_excluded_from_baseline() -> None:
    # group 1 = [NaN, 1, 0, 0]: valid [1, 0, 0], mean 1/3, sample var = (4/9 + 1/9 + 1/9) / 2 = 1/3,
    #   std 0.57735 -> [0, (2/3)/0.57735, (-1/3)/0.57735, same] = [0, 1.154701, -0.577350, -0.577350]
    # group 2 = [NaN, NaN, 1, NaN]: one valid sample, no baseline -> all 0
    # group 3 = all NaN -> all 0
    rewards = torch.tensor([NAN, 1.0, 0.0, 0.0, NAN, NAN, 1.0, NAN, NAN, NAN, NAN, NAN])
    advantages = grpo_advantages(rewards, 4, eps=0.0)
    _close(advantages, [0.0, 1.154701, -0.577350, -0.577350] + [0.0] * 8)
    assert torch.isfinite(advantages).all()


def test_drgrpo_is_reward_minus_group_mean() -> None:
    # [1, 0, 0, 0]: mean 0.25 -> [0.75, -0.25, -0.25, -0.25]; [NaN, 2, 0, 1]: mean of valid = 1
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, NAN, 2.0, 0.0, 1.0])
    _close(grpo_advantages(rewards, 4, normalize_std=False), [0.75, -0.25, -0.25, -0.25, 0.0, 1.0, -1.0, 0.0])


def test_grpo_preserves_dtype_and_accepts_integers() -> None:
    bf16 = grpo_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.bfloat16), 2)
    assert bf16.dtype == torch.bfloat16
    ints = grpo_advantages(torch.tensor([1, 0, 1, 1]), 2)
    assert ints.dtype == torch.float32
    _close(ints, [0.707106, -0.707106, 0.0, 0.0])


def test_group_size_must_divide() -> None:
    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="shape"):
        grpo_advantages(torch.zeros(2, 2), 2)


# ---- RLOO --------------------------------------------------------------------------------------


def test_rloo_hand_computed() -> None:
    # [1, 0, 0, 1]: r_0 - mean(0, 0, 1) = 1 - 1/3 = 0.666667; r_1 - mean(1, 0, 1) = 0 - 2/3
    # [3, 1]: 3 - 1 = 2, 1 - 3 = -2
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0, 5.0, 5.0])
    _close(rloo_advantages(rewards[:4], 4), [0.666667, -0.666667, -0.666667, 0.666667])
    _close(rloo_advantages(rewards[4:], 2), [2.0, -2.0, 0.0, 0.0])


def test_rloo_nan_leave_one_out_over_valid_members() -> None:
    # [1, NaN, 0, 0]: valid [1, 0, 0] -> 1 - 0 = 1; 0 - mean(1, 0) = -0.5; -0.5; NaN -> 0
    # [NaN, 2, NaN, NaN]: single valid -> 0
    rewards = torch.tensor([1.0, NAN, 0.0, 0.0, NAN, 2.0, NAN, NAN])
    _close(rloo_advantages(rewards, 4), [1.0, 0.0, -0.5, -0.5, 0.0, 0.0, 0.0, 0.0])


def test_rloo_equals_scaled_centred_rewards() -> None:
    rewards = torch.tensor([0.2, 0.9, 0.4, 0.7, 0.1])
    k = 5
    torch.testing.assert_close(rloo_advantages(rewards, k), k / (k - 1) * (rewards - rewards.mean()))


# ---- REINFORCE++ -------------------------------------------------------------------------------


def test_reinforce_pp_batch_normalisation() -> None:
    # batch [1, 0, 0, 0, 1, 1] (groups ignored): mean 0.5, sample var = 6 * 0.25 / 5 = 0.3, std 0.547723
    #   -> +-0.5 / 0.547723 = +-0.912871
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    expected = [0.912871, -0.912871, -0.912871, -0.912871, 0.912871, 0.912871]
    _close(reinforce_pp_advantages(rewards, 3, subtract_group_mean=False, eps=0.0), expected)


def test_reinforce_pp_baseline_hand_computed() -> None:
    # groups [1, 0] and [1, 1]: centred [0.5, -0.5, 0, 0]; batch mean 0, sample var = 0.5 / 3 = 1/6,
    #   std 0.408248 -> [1.224745, -1.224745, 0, 0]
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    expected = [1.224745, -1.224745, 0.0, 0.0]
    _close(reinforce_pp_advantages(rewards, 2, subtract_group_mean=True, eps=0.0), expected)


def test_reinforce_pp_nan_handling() -> None:
    # no baseline: valid [1, 0, 1] -> mean 2/3, sample var = (1/9 + 4/9 + 1/9) / 2 = 1/3, std 0.57735
    #   -> [0.57735, -1.154701, 0 (NaN), 0.57735]
    rewards = torch.tensor([1.0, 0.0, NAN, 1.0])
    _close(reinforce_pp_advantages(rewards, 2, subtract_group_mean=False, eps=0.0), [0.57735, -1.154701, 0.0, 0.57735])
    # baseline: group 2 = [NaN, 1] has no baseline -> excluded; group 1 centred [0.5, -0.5],
    #   mean 0, sample std = sqrt(0.5 / 1) = 0.707107 -> +-0.707107
    _close(reinforce_pp_advantages(rewards, 2, subtract_group_mean=True, eps=0.0), [0.707107, -0.707107, 0.0, 0.0])


def test_reinforce_pp_all_nan_or_constant_batch_is_zero() -> None:
    for subtract in (False, True):
        for rewards in (torch.full((4,), NAN), torch.ones(4)):
            assert torch.equal(reinforce_pp_advantages(rewards, 2, subtract_group_mean=subtract), torch.zeros(4))
    assert reinforce_pp_advantages(torch.zeros(0), 2, subtract_group_mean=True).shape == (0,)


# ---- dispatcher --------------------------------------------------------------------------------


def test_compute_advantages_dispatch() -> None:
    rewards = torch.tensor([1.0, 0.0, NAN, 1.0, 0.5, 0.5])
    assert set(ADVANTAGE_ESTIMATORS) == {"grpo", "drgrpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"}
    torch.testing.assert_close(compute_advantages("grpo", rewards, 2), grpo_advantages(rewards, 2))
    torch.testing.assert_close(
        compute_advantages("drgrpo", rewards, 2), grpo_advantages(rewards, 2, normalize_std=False)
    )
    torch.testing.assert_close(compute_advantages("rloo", rewards, 2), rloo_advantages(rewards, 2))
    torch.testing.assert_close(
        compute_advantages("reinforce_pp_baseline", rewards, 2),
        reinforce_pp_advantages(rewards, 2, subtract_group_mean=True),
    )
    for name in ADVANTAGE_ESTIMATORS:
        assert torch.isfinite(compute_advantages(name, rewards, 2)).all()


def test_compute_advantages_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="grpo, drgrpo, rloo"):
        compute_advantages("ppo", torch.zeros(2), 2)



def test_reinforce_pp_normalises_over_tokens_like_the_reference_implementations() -> None:
    # OpenRLHF and verl whiten REINFORCE++ returns over the batch's response tokens: with outcome rewards
    # every token of a sequence carries its reward, so the statistics are those of the rewards repeated
    # once per token (unbiased std). Lengths 1, 4, 2, 3; rewards 1, 0, 0, 1.
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    lengths = torch.tensor([1, 4, 2, 3])
    per_token = torch.repeat_interleave(rewards, lengths)            # what the references whiten
    mean, std = per_token.mean(), per_token.std()                    # 0.4, 0.516398
    expected = (rewards - mean) / std
    got = reinforce_pp_advantages(rewards, 2, subtract_group_mean=False, eps=0.0, token_counts=lengths)
    _close(got, expected.tolist())
    _close(got, [1.161895, -0.774597, -0.774597, 1.161895])
    # Per sequence (no counts) the mean is 0.5: long sequences no longer outweigh short ones.
    _close(reinforce_pp_advantages(rewards, 2, subtract_group_mean=False, eps=0.0), [0.866025, -0.866025, -0.866025, 0.866025])
    # A sequence with no token (fully masked) is left out of the statistics and gets 0.
    zero = reinforce_pp_advantages(rewards, 2, subtract_group_mean=False, eps=0.0,
                                   token_counts=torch.tensor([1, 4, 2, 0]))
    assert zero[3] == 0.0
    per_token = torch.repeat_interleave(rewards[:3], torch.tensor([1, 4, 2]))
    _close(zero[:3], ((rewards[:3] - per_token.mean()) / per_token.std()).tolist())
