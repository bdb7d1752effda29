"""The loss menu: GSPO, CISPO and the rollout-correction presets against hand-computed values; the
registry (names, a user's `package.module:function`, one-line errors); ActorLoss composing them."""

from __future__ import annotations

import math
import sys
from dataclasses import replace

import pytest
import torch

from r1ray.algos.loss_registry import POLICY_LOSSES, get_policy_loss
from r1ray.algos.policy_variants import cispo_loss, gspo_loss
from r1ray.algos.rollout_correction import correction_weights, resolve_preset
from r1ray.config import AlgorithmConfig, R1RayConfig
from r1ray.config_checks import check_config
from r1ray.protocol import TrainBatch, pack
from r1ray.workers.losses import ActorLoss, LossSettings


def _leaf(log_ratios: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logprobs needing grad, old = 0): exp(logp - old) are the given ratios' logs."""
    return torch.tensor(log_ratios).requires_grad_(True), torch.zeros(len(log_ratios), len(log_ratios[0]))


# ---- GSPO ----------------------------------------------------------------------------------------

def test_gspo_clips_the_sequence_ratio_and_spreads_its_gradient() -> None:
    # Row 0: token ratios 4 and 1 -> sequence ratio exp(mean(ln 4, 0)) = 2. A = +1 with clip_high 0.2:
    # loss per token max(-2, -1.2) = -1.2, clipped, no gradient. Row 1: ratios 4 and 1 again, A = -1:
    # max(2, 0.8) = 2 per token, unclipped; d/dlogp_t = -A * s = 2, divided by 2 tokens (seq-mean-token-mean)
    # and by 2 sequences -> 0.5. Loss = mean(-1.2, 2) = 0.4.
    logprobs, old = _leaf([[math.log(4.0), 0.0], [math.log(4.0), 0.0]])
    loss, metrics = gspo_loss(logprobs, old, torch.tensor([1.0, -1.0]), torch.ones(2, 2), clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx(0.4)
    assert metrics["pg_clipfrac"] == pytest.approx(0.5)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, 0.0], [0.5, 0.5]]))


def test_gspo_ignores_padding_in_the_sequence_ratio() -> None:
    # The padded token (log ratio 50) must not enter the geometric mean: ratio exp(ln 1.1) = 1.1, within
    # clip 0.2, A = 1 -> loss -1.1.
    logprobs, old = _leaf([[math.log(1.1), 50.0]])
    loss, _ = gspo_loss(logprobs, old, torch.tensor([1.0]), torch.tensor([[1.0, 0.0]]), clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx(-1.1)


# ---- CISPO ---------------------------------------------------------------------------------------

def test_cispo_clips_the_weight_and_keeps_every_gradient() -> None:
    # ratios 1.5 and 0.5, A = 1, clip 0.2 -> weights 1.2 and 0.8 (both clipped).
    # loss_t = -w * A * logp_t = [-1.2 ln 1.5, -0.8 ln 0.5]; token-mean; grad -w * A / 2 = [-0.6, -0.4].
    logprobs, old = _leaf([[math.log(1.5), math.log(0.5)]])
    loss, metrics = cispo_loss(logprobs, old, torch.tensor([1.0]), torch.ones(1, 2))
    assert loss.item() == pytest.approx((-1.2 * math.log(1.5) - 0.8 * math.log(0.5)) / 2)
    assert metrics["pg_clipfrac"] == 1.0
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-0.6, -0.4]]))


@pytest.mark.parametrize("fn", [gspo_loss, cispo_loss])
def test_gspo_and_cispo_refuse_a_dual_clip(fn) -> None:
    logprobs, old = _leaf([[0.0]])
    with pytest.raises(ValueError, match="dual_clip"):
        fn(logprobs, old, torch.tensor([1.0]), torch.ones(1, 1), dual_clip=3.0)


# ---- rollout correction --------------------------------------------------------------------------

# Token ratios rho = pi_old / mu = 3, 1, 0.25 (and a padding token that must not count).
_OLD = torch.tensor([[math.log(3.0), 0.0, math.log(0.25), 9.0]])
_MU = torch.zeros(1, 4)
_MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
_K3 = ((3 - 1 - math.log(3)) + 0.0 + (0.25 - 1 - math.log(0.25))) / 3


@pytest.mark.parametrize(("preset", "band_or_cap", "weights", "truncated", "masked"), [
    ("tis_token", None, [2.0, 1.0, 0.25], 1 / 3, 0.0),                 # min(rho, 2)
    ("tis_seq", None, [0.75] * 3, 0.0, 0.0),                           # min(3 * 1 * 0.25, 2)
    ("tis_seq", 1.0, [0.75] * 3, 0.0, 0.0),                            # cap 1 leaves 0.75
    ("mis_token", None, [0.0, 1.0, 0.0], 0.0, 2 / 3),                  # band 0.5-2 keeps rho = 1 only
    ("icepop", None, [3.0, 1.0, 0.0], 0.0, 1 / 3),                     # band 0.5-5
    ("mis_seq", None, [1.0] * 3, 0.0, 0.0),                            # geometric mean 0.75^(1/3) = 0.909 kept
    ("mis_seq", [0.95, 1.5], [0.0] * 3, 0.0, 1.0),                     # ... but not in 0.95-1.5
])
def test_correction_presets_hand_computed(preset, band_or_cap, weights, truncated, masked) -> None:
    cap = band_or_cap if isinstance(band_or_cap, float) else 0.0
    band = band_or_cap if isinstance(band_or_cap, list) else ()
    got, metrics = correction_weights(_OLD, _MU, _MASK, resolve_preset(preset, cap, band))
    torch.testing.assert_close(got, torch.tensor([[*weights, 0.0]]))
    assert metrics["kl_k3"] == pytest.approx(_K3)
    assert metrics["truncated_frac"] == pytest.approx(truncated)
    assert metrics["masked_frac"] == pytest.approx(masked)
    assert metrics["weight_p50"] == pytest.approx(sorted(weights)[1])


def test_no_correction_still_reports_the_rollout_kl() -> None:
    weights, metrics = correction_weights(_OLD, _MU, _MASK, resolve_preset("none"))
    assert weights is None
    assert metrics == pytest.approx({"kl_k3": _K3, "truncated_frac": 0.0, "masked_frac": 0.0})


@pytest.mark.parametrize(("name", "cap", "band", "message"), [
    ("tis", 0.0, (), "algorithm.rollout_correction: 'tis' is not a preset"),
    ("tis_token", 0.5, (), "algorithm.rollout_correction_cap: 0.5 must be >= 1"),
    ("icepop", 0.0, (2.0, 5.0), "algorithm.rollout_correction_band: [2.0, 5.0] must be [low, high]"),
    ("icepop", 0.0, (0.5,), "algorithm.rollout_correction_band: [0.5] must be two numbers"),
])
def test_bad_correction_settings_are_one_line(name, cap, band, message) -> None:
    with pytest.raises(ValueError) as info:
        resolve_preset(name, cap, band)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


# ---- the registry --------------------------------------------------------------------------------

def test_registry_names_and_a_users_loss(tmp_path, monkeypatch) -> None:
    assert set(POLICY_LOSSES) == {"clipped", "gspo", "cispo"}
    (tmp_path / "my_losses").mkdir()
    (tmp_path / "my_losses" / "__init__.py").write_text("")
    (tmp_path / "my_losses" / "mod.py").write_text(
        "import torch\n"
        "def plain_pg(logprobs, old_logprobs, advantages, mask, *, weights=None, **_):\n"
        "    loss = -(advantages[:, None] * logprobs * mask).sum() / mask.sum()\n"
        "    return loss, {'pg_loss': float(loss)}\n"
        "broken = 3\n")
    (tmp_path / "my_losses" / "bad.py").write_text("raise SystemExit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = get_policy_loss("my_losses.mod:plain_pg")
    loss, _ = fn(torch.tensor([[-1.0, -3.0]]), torch.zeros(1, 2), torch.tensor([2.0]), torch.ones(1, 2))
    assert loss.item() == pytest.approx(4.0)               # -(2 * -1 + 2 * -3) / 2
    for name, message in [("clipp", "algorithm.policy_loss='clipp' is not a known loss. Did you mean 'clipped'"),
                          ("my_losses.nope:f", "algorithm.policy_loss='my_losses.nope:f' does not import: "
                                               "ModuleNotFoundError"),
                          ("my_losses.bad:f", "algorithm.policy_loss='my_losses.bad:f' does not import: SystemExit: 3"),
                          ("my_losses.mod:broken", "algorithm.policy_loss='my_losses.mod:broken' is not callable")]:
        with pytest.raises(ValueError) as info:
            get_policy_loss(name)
        assert str(info.value).startswith(message) and "\n" not in str(info.value)
    sys.modules.pop("my_losses.mod", None)


def test_config_checks_name_the_loss_fields() -> None:
    def problems(**algorithm) -> list[str]:
        return [p for p in check_config(R1RayConfig(algorithm=AlgorithmConfig(**algorithm)))
                if p.startswith("algorithm.")]

    assert problems(policy_loss="cispo", rollout_correction="icepop") == []
    assert problems(policy_loss="ppo")[0].startswith("algorithm.policy_loss: unknown loss 'ppo'; known: clipped, gspo")
    assert problems(policy_loss="no_such_pkg_r1ray.x:f")[0].startswith(
        "algorithm.policy_loss: module 'no_such_pkg_r1ray.x' of 'no_such_pkg_r1ray.x:f' cannot be imported")
    assert problems(policy_loss="gspo", dual_clip=3.0) == [
        "algorithm.dual_clip: gspo bounds its ratio already; set dual_clip=0"]
    assert problems(rollout_correction="tis_seq", rollout_correction_cap=0.5) == [
        "algorithm.rollout_correction_cap: 0.5 must be >= 1 (it caps a weight whose mean is 1)"]


# ---- ActorLoss composes the registry and the correction ----------------------------------------

def _batch() -> TrainBatch:
    tokens, cu = pack([[1, 2, 5, 5, 5], [1, 2, 5, 5, 5]])
    mask = torch.ones(2, 3)
    old = torch.tensor([[-1.0, -0.5, -2.0], [-0.2, -0.7, -1.5]])
    sampler = old - torch.tensor([[0.9, 0.0, -0.3], [0.1, 0.0, 0.0]])    # rho = exp(0.9), 1, exp(-0.3), ...
    return TrainBatch(tokens=tokens, cu_seqlens=cu, prompt_lens=torch.full((2,), 2), response_mask=mask,
                      advantages=torch.tensor([[1.0] * 3, [-1.0] * 3]), old_logprobs=old, ref_logprobs=None,
                      rollout_logprobs=sampler)


@pytest.mark.parametrize("loss_name", ["clipped", "gspo", "cispo"])
def test_actor_loss_is_the_registry_loss_with_the_correction_weights(loss_name) -> None:
    batch = _batch()
    settings = LossSettings(clip_low=0.2, clip_high=0.2, dual_clip=None, agg="token-mean", norm_len=3, kl_kind="k3",
                            kl_coef=0.0, entropy_coef=0.0, policy_loss=loss_name, correction=resolve_preset("tis_token"))
    logprobs = batch.old_logprobs + 0.1
    loss, metrics = ActorLoss(settings, 6.0, world_size=1)(batch, logprobs, None)
    weights, _ = correction_weights(batch.old_logprobs, batch.rollout_logprobs, batch.response_mask,
                                    resolve_preset("tis_token"))
    assert weights[0, 0].item() == pytest.approx(2.0)                     # exp(0.9) = 2.46 truncated at 2
    expected, _ = POLICY_LOSSES[loss_name](logprobs, batch.old_logprobs, batch.advantages, batch.response_mask,
                                          clip_low=0.2, clip_high=0.2, agg="token-mean", norm_len=3, weights=weights)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert metrics["rollout_corr/truncated_frac"] == pytest.approx(1 / 6)
    assert metrics["rollout_corr/kl_k3"] > 0
    unweighted = replace(settings, correction=None)
    plain, _ = ActorLoss(unweighted, 6.0, world_size=1)(batch, logprobs, None)
    assert plain.item() != pytest.approx(loss.item())
