"""KL estimators and the KL coefficient schedule against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from r1ray.algos import KL_PENALTIES, KL_SCHEDULES, kl_coef_schedule, kl_penalty


def test_kl_kinds_hand_computed() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -0.5]])
    # d = logp - ref = [0.5, -1.0, 0.0]
    # k1 = d = [0.5, -1, 0]; k2 = d^2 / 2 = [0.125, 0.5, 0]
    # k3 with x = ref - logp = [-0.5, 1, 0]: e^x - x - 1 = [0.606531 + 0.5 - 1, 2.718282 - 2, 0]
    #    = [0.106531, 0.718282, 0]
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k1"), torch.tensor([[0.5, -1.0, 0.0]]))
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k2"), torch.tensor([[0.125, 0.5, 0.0]]))
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k3"), torch.tensor([[0.106531, 0.718282, 0.0]]))


def test_k3_is_nonnegative_and_zero_for_equal_inputs() -> None:
    generator = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(64, 32, generator=generator) * 5
    ref = logprobs + torch.randn(64, 32, generator=generator) * 1e-4
    assert (kl_penalty(logprobs, ref, "k3") >= 0).all()
    assert torch.equal(kl_penalty(logprobs, logprobs, "k3"), torch.zeros(64, 32))


def test_kl_no_overflow_on_huge_differences() -> None:
    logprobs = torch.tensor([0.0, -1000.0, 0.0], requires_grad=True)
    ref = torch.tensor([-1000.0, 0.0, 0.0])
    k3 = kl_penalty(logprobs, ref, "k3")
    # x = ref - logp = [-1000 -> clamp -20, 1000 -> clamp 20, 0]: e^-20 + 20 - 1 = 19 -> clamp 10;
    # e^20 - 21 -> clamp 10
    torch.testing.assert_close(k3, torch.tensor([10.0, 10.0, 0.0]))
    k3.sum().backward()
    assert torch.isfinite(logprobs.grad).all()
    for kind in KL_PENALTIES:
        assert torch.isfinite(kl_penalty(logprobs.detach(), ref, kind)).all()


def test_kl_dtype_gradient_and_errors() -> None:
    logprobs = torch.tensor([-1.0, -2.0], dtype=torch.bfloat16)
    assert kl_penalty(logprobs, logprobs - 1, "k3").dtype == torch.bfloat16
    leaf = torch.tensor([-1.0, -2.0], requires_grad=True)
    # d k3 / d logp = 1 - exp(ref - logp) = 1 - e^{-0.5} = 0.393469 for ref = logp - 0.5
    kl_penalty(leaf, leaf.detach() - 0.5, "k3").sum().backward()
    torch.testing.assert_close(leaf.grad, torch.full((2,), 0.393469))
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(leaf, leaf, "k4")
    with pytest.raises(ValueError, match="shape"):
        kl_penalty(leaf, leaf[:1], "k1")


@pytest.mark.parametrize(
    ("kind", "step", "expected"),
    [
        ("constant", 0, 0.1),
        ("constant", 50, 0.1),
        ("constant", 100, 0.1),
        # linear 0.1 -> 0.01: at 50 of 100 -> 0.1 - 0.09 * 0.5 = 0.055
        ("linear", 0, 0.1),
        ("linear", 50, 0.055),
        ("linear", 100, 0.01),
        ("linear", 250, 0.01),
        ("linear", -5, 0.1),
        # cosine: 0.01 + 0.09 * 0.5 * (1 + cos(pi * p)); p = 0.5 -> 0.055; p = 0.25 -> 0.01 + 0.045 * 1.707107
        ("cosine", 0, 0.1),
        ("cosine", 25, 0.01 + 0.045 * (1 + math.sqrt(0.5))),
        ("cosine", 50, 0.055),
        ("cosine", 100, 0.01),
        ("cosine", 1000, 0.01),
    ],
)
def test_kl_coef_schedule(kind: str, step: int, expected: float) -> None:
    value = kl_coef_schedule(kind, 0.1, 0.01, step, 100)
    assert isinstance(value, float)
    assert value == pytest.approx(expected)


def test_kl_coef_schedule_zero_total_steps_and_errors() -> None:
    assert set(KL_SCHEDULES) == {"constant", "linear", "cosine"}
    assert kl_coef_schedule("linear", 0.1, 0.01, 0, 0) == pytest.approx(0.01)
    assert kl_coef_schedule("cosine", 0.1, 0.01, 3, 0) == pytest.approx(0.01)
    assert kl_coef_schedule("constant", 0.1, 0.01, 3, 0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="constant, linear, cosine"):
        kl_coef_schedule("step", 0.1, 0.01, 0, 10)
    with pytest.raises(ValueError, match="total_steps"):
        kl_coef_schedule("linear", 0.1, 0.01, 0, -1)
