"""Pure pieces of the controller and the actor's loss: advantages and group selection, schedules, secret
redaction, checkpoint bookkeeping, loss weighting for gradient accumulation, and packed-forward layout.
No Ray cluster is started; everything runs on hand-made tensors and real files."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from r1ray.algos import aggregate_loss, kl_penalty, policy_loss
from r1ray.config import AlgorithmConfig, R1RayConfig, RolloutConfig
from r1ray.config_load import load_config
from r1ray.config_load import config_to_dict
from r1ray.controller.advantage import (
    build_train_batch,
    keep_rows,
    logprob_view,
    scores_tensor,
    select_groups,
    shaped_scores,
)
from r1ray.controller.checkpoint import CheckpointManager, TrainerState, read_checkpoint
from r1ray.controller.redact import REDACTED, redact
from r1ray.controller.schedule import groups_unit, response_budget
from r1ray.protocol import RolloutBatch, TrainBatch, concat_batches, pack, pad_right, split_batch
from r1ray.workers.engines.packing import pack_for_forward
from r1ray.workers.losses import ActorLoss, LossSettings, denominator
from r1ray.workers.placement import Placement, ResourcePool

REPO = Path(__file__).resolve().parents[2]


def rollout(response_lens: list[int], group_size: int, truncated: list[bool] | None = None,
            prompt_len: int = 2) -> RolloutBatch:
    """B sequences with `prompt_len` prompt tokens and the given response lengths; logprobs -0.5 each."""
    seqs = [[1] * prompt_len + [7] * n for n in response_lens]
    tokens, cu = pack(seqs)
    b = len(response_lens)
    return RolloutBatch(
        tokens=tokens, cu_seqlens=cu, prompt_lens=torch.full((b,), prompt_len),
        truncated=torch.tensor(truncated or [False] * b),
        rollout_logprobs=pad_right([torch.full((n,), -0.5) for n in response_lens]),
        response_texts=["x"] * b, ground_truths=["1"] * b, data_sources=["arithmetic"] * b,
        extra_infos=[{}] * b, group_size=group_size)


# ---- scores and group selection ------------------------------------------------------------------


def test_scores_tensor_maps_none_to_nan() -> None:
    scores = scores_tensor([1.0, None, 0, 0.5])
    assert scores.dtype == torch.float32
    assert scores[0] == 1.0 and math.isnan(scores[1]) and scores[2] == 0.0 and scores[3] == 0.5


def test_select_groups_without_dynamic_sampling_keeps_everything() -> None:
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])     # groups of 2: same, differ, same
    chosen = select_groups(scores, 2, dynamic_sampling=False)
    assert chosen.rows == list(range(6))
    assert chosen.frac_zero_std == pytest.approx(2 / 3)


def test_select_groups_drops_zero_spread_groups() -> None:
    # 4 groups of 3: [all 1], [1,0,1], [nan,0,0] (no spread among scorable), [0,1,nan]
    scores = scores_tensor([1, 1, 1, 1, 0, 1, None, 0, 0, 0, 1, None])
    chosen = select_groups(scores, 3, dynamic_sampling=True)
    assert chosen.rows == [3, 4, 5, 9, 10, 11]
    assert chosen.frac_zero_std == pytest.approx(0.5)


def test_keep_rows() -> None:
    batch = rollout([1, 2, 3, 4], 2)
    assert keep_rows(batch, [0, 1, 2, 3]) is batch
    kept = keep_rows(batch, [2, 3])
    assert kept.response_lens.tolist() == [3, 4]


# ---- building the TrainBatch ---------------------------------------------------------------------


def test_build_train_batch_broadcasts_advantages_on_the_mask() -> None:
    batch = rollout([2, 3, 1, 4], group_size=2)
    ref = torch.full_like(batch.rollout_logprobs, -0.5)
    old = torch.full_like(batch.rollout_logprobs, -0.4)
    algo = AlgorithmConfig()                                      # grpo, kl in the loss
    train = build_train_batch(replace(batch, ref_logprobs=ref, old_logprobs=old), torch.tensor([1.0, 0.0, 0.5, 0.5]),
                              algo, kl_coef=0.1)
    mask = batch.response_mask()
    assert torch.equal(train.response_mask, mask)
    # Group 0: scores 1 and 0 -> (+-0.5) / sample std sqrt(0.5) = +-1/sqrt(2); group 1: equal scores -> 0.
    expected = torch.tensor([0.5 ** 0.5, -(0.5 ** 0.5), 0.0, 0.0])[:, None] * mask
    assert torch.allclose(train.advantages, expected, atol=1e-5)
    assert train.ref_logprobs is ref and train.old_logprobs is old
    assert train.rollout_logprobs is batch.rollout_logprobs
    assert torch.equal(train.tokens, batch.tokens) and torch.equal(train.cu_seqlens, batch.cu_seqlens)


def test_build_train_batch_nan_scores_get_zero_advantage() -> None:
    batch = rollout([2, 2, 2, 2], group_size=4)
    train = build_train_batch(batch, scores_tensor([1.0, None, 0.0, 1.0]), AlgorithmConfig(), kl_coef=0.0)
    assert not torch.isnan(train.advantages).any()
    assert torch.equal(train.advantages[1], torch.zeros(2))
    assert train.advantages[0, 0] > 0 > train.advantages[2, 0]


def test_overlong_mask_zeroes_truncated_rows() -> None:
    batch = rollout([2, 4, 4, 1], group_size=2, truncated=[False, True, True, False])
    algo = replace(AlgorithmConfig(), overlong_mask=True)
    train = build_train_batch(batch, torch.tensor([0.0, 1.0, 1.0, 0.0]), algo, kl_coef=0.0)
    assert train.response_mask.tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    assert torch.equal(train.advantages[1], torch.zeros(4)) and torch.equal(train.advantages[2], torch.zeros(4))
    assert train.advantages[0, 0] != 0
    unmasked = build_train_batch(batch, torch.tensor([0.0, 1.0, 1.0, 0.0]), AlgorithmConfig(), kl_coef=0.0)
    assert unmasked.response_mask[1].sum() == 4


def test_kl_in_reward_lowers_scores_and_keeps_ref_out_of_the_loss() -> None:
    batch = rollout([2, 2, 3, 1], group_size=2)
    ref = batch.rollout_logprobs.clone()
    ref[0, :2] = -1.5                                   # row 0 drifted from the reference on both tokens
    scores = torch.tensor([1.0, 1.0, 0.0, 0.0])
    algo = replace(AlgorithmConfig(), adv_estimator="drgrpo", kl_placement="reward", kl_kind="k1")
    train = build_train_batch(replace(batch, ref_logprobs=ref), scores, algo, kl_coef=0.5)
    # k1 per token = logp - ref = -0.5 - (-1.5) = 1 on 2 tokens -> score 1 - 0.5 * 2 = 0 vs 1 for row 1.
    # Dr. GRPO advantage = score - group mean: -0.5 and +0.5; group 1 has no KL and equal scores: 0.
    assert train.advantages[:, 0].tolist() == pytest.approx([-0.5, 0.5, 0.0, 0.0])
    assert train.ref_logprobs is None                    # KL is in the reward, not in the loss
    off = build_train_batch(replace(batch, ref_logprobs=ref), scores, replace(algo, kl_placement="loss"), kl_coef=0.5)
    assert off.advantages[:, 0].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0])
    assert off.ref_logprobs is ref
    none = build_train_batch(replace(batch, ref_logprobs=ref), scores, replace(algo, kl_placement="none"),
                             kl_coef=0.5)
    assert none.ref_logprobs is None


def test_kl_in_reward_ignores_padding_and_masked_rows() -> None:
    batch = rollout([1, 1], group_size=2, truncated=[True, False])
    ref = torch.full_like(batch.rollout_logprobs, -3.0)     # row 0 would carry KL, but it is truncated
    algo = replace(AlgorithmConfig(), adv_estimator="drgrpo", kl_placement="reward", kl_kind="k1",
                   overlong_mask=True)
    train = build_train_batch(replace(batch, ref_logprobs=ref), torch.tensor([0.0, 0.0]), algo, kl_coef=1.0)
    # Only row 1's token counts: k1 = 2.5 -> scores [0, -2.5] -> advantages [1.25, -1.25] (row 0 masked out).
    assert train.advantages.tolist() == [[0.0], [-1.25]]


def test_logprob_view() -> None:
    batch = rollout([2, 3], group_size=2)
    view = logprob_view(batch)
    assert isinstance(view, TrainBatch)
    assert torch.equal(view.response_mask, batch.response_mask())
    assert torch.equal(view.advantages, torch.zeros(2, 3))
    assert view.old_logprobs is None and view.ref_logprobs is None


def test_shaped_scores_overlong_penalty() -> None:
    batch = rollout([4, 6, 8, 10], group_size=2)
    scores = torch.tensor([1.0, 1.0, 1.0, 1.0])
    assert shaped_scores(scores, batch, AlgorithmConfig(), budget=8) is scores
    algo = replace(AlgorithmConfig(), overlong_shaping=True, overlong_buffer_len=4, overlong_penalty=1.0)
    # Budget 8, buffer 4: no penalty up to 4 tokens, linear to -1 at 8, -1 beyond.
    assert shaped_scores(scores, batch, algo, budget=8).tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert shaped_scores(scores, batch, replace(algo, overlong_penalty=0.5), budget=8).tolist() == \
        pytest.approx([1.0, 0.75, 0.5, 0.5])


# ---- schedules ------------------------------------------------------------------------------------


def test_response_budget_grows_8k_to_20k() -> None:
    cfg = replace(RolloutConfig(), max_response_length=20480,
                  response_length_schedule=[[0, 8192], [400, 12288], [800, 20480]])
    assert response_budget(cfg, 1) == 8192
    assert response_budget(cfg, 400) == 8192
    assert response_budget(cfg, 401) == 12288
    assert response_budget(cfg, 800) == 12288
    assert response_budget(cfg, 801) == 20480
    assert response_budget(cfg, 5000) == 20480
    assert response_budget(replace(RolloutConfig(), max_response_length=300), 7) == 300


def test_response_budget_of_the_shipped_gpu_recipe() -> None:
    cfg = OmegaConf.load(REPO / "configs" / "r1_zero_qwen2.5_7b_math.yaml")
    rollout_cfg = replace(RolloutConfig(), max_response_length=cfg.rollout.max_response_length,
                          response_length_schedule=OmegaConf.to_object(cfg.rollout.response_length_schedule))
    budgets = [response_budget(rollout_cfg, step) for step in (1, cfg.trainer.total_steps)]
    assert budgets == [8192, 20480]


def _placement(ranks: int) -> Placement:
    return Placement(pools={"train": ResourcePool(nodes=1, devices_per_node=ranks), "gen": ResourcePool()},
                     roles={"actor": "train", "ref": "train", "rollout": "gen", "reward": "gen"})


@pytest.mark.parametrize(
    ("ranks", "mini_batches", "n", "unit"),
    [(1, 1, 8, 1), (2, 1, 8, 1), (2, 1, 3, 2), (8, 8, 64, 1), (4, 2, 6, 4), (6, 1, 4, 3)],
)
def test_groups_unit(ranks: int, mini_batches: int, n: int, unit: int) -> None:
    cfg = R1RayConfig()
    cfg = replace(cfg, rollout=replace(cfg.rollout, n=n), algorithm=replace(cfg.algorithm, mini_batches=mini_batches))
    got = groups_unit(cfg, _placement(ranks))
    assert got == unit
    # The smallest group count whose sequences split evenly over ranks x mini-batches.
    assert (got * n) % (ranks * mini_batches) == 0
    assert all((g * n) % (ranks * mini_batches) for g in range(1, got))


# ---- redaction ----------------------------------------------------------------------------------


def test_redact_replaces_nested_secrets_and_keeps_the_rest() -> None:
    tree = {
        "wandb": {"api_key": "abc123", "project": "r1ray"},
        "hub": [{"token": "hf_xyz", "name": "Qwen/Qwen2.5-7B"}, {"HF_TOKEN": "hf_2"}],
        "db": {"password": "hunter2", "passwd": "p", "host": "localhost", "port": 5432},
        "oauth": {"client_secret": "s3", "access_token": "t0", "apiKey": "k", "authToken": "a"},
        "empty": {"token": "", "password": None},
        "lr": 1e-6,
    }
    out = redact(tree)
    assert out["wandb"] == {"api_key": REDACTED, "project": "r1ray"}
    assert out["hub"] == [{"token": REDACTED, "name": "Qwen/Qwen2.5-7B"}, {"HF_TOKEN": REDACTED}]
    assert out["db"] == {"password": REDACTED, "passwd": REDACTED, "host": "localhost", "port": 5432}
    assert set(out["oauth"].values()) == {REDACTED}
    assert out["empty"] == {"token": "", "password": None}      # nothing to hide, and shows it is unset
    assert out["lr"] == 1e-6
    assert tree["wandb"]["api_key"] == "abc123"                  # a copy; the input is untouched


def test_redact_keeps_fields_that_merely_mention_tokens() -> None:
    tree = {"actor": {"micro_batch_tokens": 8192}, "max_tokens": 256, "tokenizer": "char", "token_ids": [1, 2]}
    assert redact(tree) == tree


def test_redacted_config_of_every_shipped_yaml_loads_back(tmp_path: Path) -> None:
    # The config saved beside a checkpoint is redacted; it must still be a loadable config.
    cfg = load_config(REPO / "configs" / "quickstart.yaml")
    path = tmp_path / "config.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(redact(config_to_dict(cfg)))))
    assert load_config(path) == cfg


# ---- checkpoints --------------------------------------------------------------------------------


def _write_actor(directory: Path) -> None:
    directory.mkdir(parents=True)
    (directory / "shard_0.pt").write_text("weights")


def _model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (model / "tokenizer.json").write_text("{}")
    (model / "model.safetensors").write_text("big")
    return model


def test_checkpoint_save_layout_and_read_back(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path / "checkpoints", keep=2)
    state = TrainerState(step=3, sampler={"epoch": 1, "position": 8}, run_id="run-abc")
    torch.manual_seed(1234)
    path = manager.save(state, write_actor=_write_actor, model_path=str(_model_dir(tmp_path)),
                        config_yaml="rollout:\n  n: 4\n")
    assert path == tmp_path / "checkpoints" / "step_000003"
    assert (path / "COMPLETE").is_file() and (path / "actor" / "shard_0.pt").read_text() == "weights"
    assert (path / "config.yaml").read_text() == "rollout:\n  n: 4\n"
    assert sorted(p.name for p in (path / "hf").iterdir()) == ["config.json", "tokenizer.json"]  # no weights
    expected_draw = torch.rand(3)
    got_state, rng = read_checkpoint(path)
    assert got_state == state
    torch.set_rng_state(rng["torch"])
    assert torch.equal(torch.rand(3), expected_draw)
    assert manager.latest() == path
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_latest_ignores_incomplete_and_temporary_dirs_and_prunes(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    manager = CheckpointManager(root, keep=2)
    assert manager.latest() is None                                  # no directory yet
    for step in (1, 2, 3):
        manager.save(TrainerState(step, {}, "r"), write_actor=_write_actor, model_path=str(tmp_path / "none"),
                     config_yaml="")
    assert [p.name for p in manager.complete()] == ["step_000002", "step_000003"]   # keep=2 pruned step 1
    assert not (root / "step_000001").exists()
    # A newer checkpoint that never finished, and a crashed write under its temporary name.
    (root / "step_000009" / "actor").mkdir(parents=True)
    (root / ".tmp-step_000010").mkdir()
    (root / ".tmp-step_000010" / "COMPLETE").write_text("ok\n")
    (root / "step_12").mkdir()                                        # not a step directory name
    (root / "step_12" / "COMPLETE").write_text("ok\n")
    assert manager.latest() == root / "step_000003"
    # The next save prunes old complete ones and stale temporaries, never an incomplete step dir's data.
    manager.save(TrainerState(4, {}, "r"), write_actor=_write_actor, model_path=str(tmp_path / "none"),
                 config_yaml="")
    assert [p.name for p in manager.complete()] == ["step_000003", "step_000004"]
    assert not (root / ".tmp-step_000010").exists()
    assert manager.latest() == root / "step_000004"


def test_save_overwrites_a_checkpoint_of_the_same_step(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=3)
    manager.save(TrainerState(5, {}, "a"), write_actor=_write_actor, model_path="", config_yaml="first")
    path = manager.save(TrainerState(5, {}, "b"), write_actor=_write_actor, model_path="", config_yaml="second")
    assert (path / "config.yaml").read_text() == "second"
    assert read_checkpoint(path)[0].run_id == "b"


def test_read_checkpoint_refuses_incomplete(tmp_path: Path) -> None:
    incomplete = tmp_path / "step_000007"
    incomplete.mkdir()
    (incomplete / "trainer_state.json").write_text(json.dumps({"step": 7, "sampler": {}, "run_id": "x"}))
    with pytest.raises(FileNotFoundError, match="not a complete r1ray checkpoint"):
        read_checkpoint(incomplete)


# ---- the actor's loss ---------------------------------------------------------------------------


def _train_batch() -> TrainBatch:
    """4 sequences with 3, 1, 4, 2 response tokens (R = 4), fixed logprobs, advantages and references."""
    lens = torch.tensor([3, 1, 4, 2])
    tokens, cu = pack([[1, 2] + [5] * int(n) for n in lens])
    mask = (torch.arange(4)[None, :] < lens[:, None]).float()
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(4, 4, generator=g) * mask
    ref = -torch.rand(4, 4, generator=g) * mask
    adv = torch.tensor([1.0, -0.5, 0.25, -1.0])[:, None] * mask
    return TrainBatch(tokens=tokens, cu_seqlens=cu, prompt_lens=torch.full((4,), 2), response_mask=mask,
                      advantages=adv, old_logprobs=old, ref_logprobs=ref, rollout_logprobs=old.clone())


def _settings(agg: str, kl_coef: float = 0.1, entropy_coef: float = 0.0) -> LossSettings:
    return LossSettings(clip_low=0.2, clip_high=0.28, dual_clip=None, agg=agg, norm_len=4, kl_kind="k3",
                        kl_coef=kl_coef, entropy_coef=entropy_coef)


def _logprobs(batch: TrainBatch) -> torch.Tensor:
    return (batch.old_logprobs + 0.15 * torch.linspace(-1, 1, 16).reshape(4, 4)) * batch.response_mask


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_actor_loss_is_policy_loss_plus_kl(agg: str) -> None:
    batch = _train_batch()
    logprobs = _logprobs(batch)
    mask = batch.response_mask
    loss_fn = ActorLoss(_settings(agg), denominator(mask, agg), world_size=1)
    loss, metrics = loss_fn(batch, logprobs, None)
    pg, _ = policy_loss(logprobs, batch.old_logprobs, batch.advantages, mask, clip_low=0.2, clip_high=0.28, agg=agg,
                        norm_len=4)
    kl = aggregate_loss(kl_penalty(logprobs, batch.ref_logprobs, "k3"), mask, agg)
    assert kl > 0
    assert loss.item() == pytest.approx((pg + 0.1 * kl).item(), rel=1e-6)
    assert metrics["actor/kl"] == pytest.approx(kl.item(), rel=1e-6)
    assert metrics["actor/pg_loss"] == pytest.approx(pg.item(), rel=1e-6)
    # The sampler is compared with the weights that sampled (the old logprobs), not with the policy being updated.
    assert metrics["rollout/logprob_gap"] == 0.0
    drifted = replace(batch, rollout_logprobs=batch.old_logprobs - 0.05 * mask)
    assert loss_fn(drifted, logprobs, None)[1]["rollout/logprob_gap"] == pytest.approx(0.05, rel=1e-5)
    # Without a reference (KL off) the loss is the policy loss alone.
    no_ref = replace(batch, ref_logprobs=None)
    loss_no_ref, metrics_no_ref = loss_fn(no_ref, logprobs, None)
    assert loss_no_ref.item() == pytest.approx(pg.item(), rel=1e-6)
    assert "actor/kl" not in metrics_no_ref


def test_actor_loss_entropy_bonus_and_on_policy_default() -> None:
    batch = replace(_train_batch(), old_logprobs=None)
    logprobs = _logprobs(_train_batch())
    mask = batch.response_mask
    entropy = torch.full((4, 4), 2.0) * mask
    loss, metrics = ActorLoss(_settings("token-mean", kl_coef=0.0, entropy_coef=0.01), float(mask.sum()), 1)(
        replace(batch, ref_logprobs=None), logprobs, entropy)
    # On-policy: ratio 1, so the loss is -mean(advantage) over tokens, minus the entropy bonus.
    expected = -(batch.advantages * mask).sum() / mask.sum() - 0.01 * 2.0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert metrics["actor/entropy"] == pytest.approx(2.0)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batch_losses_sum_to_the_full_batch_loss(agg: str) -> None:
    batch = _train_batch()
    logprobs = _logprobs(batch).requires_grad_(True)
    settings = _settings(agg)
    full_loss, _ = ActorLoss(settings, denominator(batch.response_mask, agg), 1)(batch, logprobs, None)
    full_grad, = torch.autograd.grad(full_loss, logprobs)

    # Micro-batches of unequal size: rows {0} and {1, 2, 3}, weighted by the mini-batch's denominator.
    global_den = denominator(batch.response_mask, agg)
    loss_fn = ActorLoss(settings, global_den, 1)
    total = torch.zeros(())
    for rows in ([0], [1, 2, 3]):
        micro = replace(batch, response_mask=batch.response_mask[rows], advantages=batch.advantages[rows],
                        old_logprobs=batch.old_logprobs[rows], ref_logprobs=batch.ref_logprobs[rows],
                        rollout_logprobs=batch.rollout_logprobs[rows], prompt_lens=batch.prompt_lens[rows])
        part, _ = loss_fn(micro, logprobs[rows], None)
        total = total + part
    assert total.item() == pytest.approx(full_loss.item(), rel=1e-5)
    micro_grad, = torch.autograd.grad(total, logprobs)
    assert torch.allclose(micro_grad, full_grad, atol=1e-7)


def test_micro_batch_weighting_across_ranks() -> None:
    # Two ranks each holding half the rows: FSDP averages their gradients, so each rank's weighted loss
    # carries a factor world_size, and the mean over ranks equals the full-batch loss.
    batch = _train_batch()
    logprobs = _logprobs(batch)
    agg = "token-mean"
    full, _ = ActorLoss(_settings(agg), denominator(batch.response_mask, agg), 1)(batch, logprobs, None)
    shards = split_batch(batch, 2)
    lp_shards = [logprobs[:2], logprobs[2:]]
    global_den = sum(denominator(s.response_mask, agg) for s in shards)
    per_rank = [ActorLoss(_settings(agg), global_den, 2)(s, lp, None)[0] for s, lp in zip(shards, lp_shards)]
    assert (sum(per_rank) / 2).item() == pytest.approx(full.item(), rel=1e-6)
    assert concat_batches(shards).advantages.shape == batch.advantages.shape


def test_denominator() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert denominator(mask, "token-mean") == 3.0
    assert denominator(mask, "seq-mean-token-mean") == 2.0
    assert denominator(mask, "seq-mean-token-sum-norm") == 2.0


# ---- packed forward layout ---------------------------------------------------------------------


def test_pack_for_forward_layout() -> None:
    # Sequences: prompt [1, 2] + response [3, 4]; prompt [5] + response [6, 7, 8].
    tokens, cu = pack([[1, 2, 3, 4], [5, 6, 7, 8]])
    packed = pack_for_forward(tokens, cu, torch.tensor([2, 1]), width=3)
    assert packed.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3]]
    # The logit at position j predicts token j + 1: responses start at flat positions 2 and 5.
    assert packed.keep.tolist() == [1, 2, 4, 5, 6]
    assert packed.targets.tolist() == [3, 4, 6, 7, 8]
    assert tokens[packed.keep + 1].tolist() == packed.targets.tolist()
    assert packed.response_lens.tolist() == [2, 3]


# ---- threads, kept groups, the reference -------------------------------------------------------


def test_threads_use_the_whole_node_on_one_box_and_a_bundle_on_a_cluster() -> None:
    """Phases run one after another, so the active role may use every core its placement reaches."""
    one_box = Placement(pools={"default": ResourcePool(devices_per_node=1, cpus_per_bundle=1.0)},
                        roles={"actor": "default", "ref": "default", "rollout": "default", "reward": "default"})
    pool = one_box.pools["default"]
    assert one_box.threads_for(pool, single_node_cpus=2.0) == 2            # was 1 thread (0.25 CPU each)
    two_ranks = ResourcePool(devices_per_node=2, cpus_per_bundle=0.25)
    assert one_box.threads_for(two_ranks, single_node_cpus=16.0) == 8
    assert one_box.threads_for(two_ranks, single_node_cpus=1.0) == 1
    gpu = ResourcePool(nodes=2, devices_per_node=8, device="gpu", cpus_per_bundle=12)
    assert one_box.threads_for(gpu, single_node_cpus=None) == 12
    assert one_box.threads_for(ResourcePool(cpus_per_bundle=0.5), single_node_cpus=None) == 1
    fixed = replace(one_box, threads_per_worker=3)
    assert fixed.threads_for(pool, single_node_cpus=2.0) == 3 and fixed.only(["actor"]).threads_per_worker == 3


def test_whole_units_trims_kept_groups_and_carries_their_fields() -> None:
    from r1ray.controller.trainer import whole_units

    first = replace(rollout([1, 2, 3, 4], 2), scores=torch.tensor([0.0, 1.0, 0.0, 1.0]))
    second = replace(rollout([5, 6], 2), scores=torch.tensor([1.0, 0.0]))
    merged = whole_units([first, second], wanted_rows=8, unit_rows=4)
    assert merged.response_lens.tolist() == [1, 2, 3, 4]              # 6 rows found: one whole unit of 4
    assert merged.scores.tolist() == [0.0, 1.0, 0.0, 1.0]
    merged = whole_units([first, second], wanted_rows=6, unit_rows=2)
    assert merged.response_lens.tolist() == [1, 2, 3, 4, 5, 6] and merged.scores.tolist()[4:] == [1.0, 0.0]
    assert merged.rollout_logprobs.shape == (6, 6)                     # widened to the widest chunk
    assert whole_units([second], wanted_rows=8, unit_rows=4) is None and whole_units([], 8, 2) is None


def test_no_reference_model_when_kl_is_zero_at_every_step() -> None:
    from r1ray.loss_spec import uses_reference_model

    cfg = R1RayConfig()
    with_kl = lambda **kw: replace(cfg, algorithm=replace(cfg.algorithm, **kw))  # noqa: E731
    assert uses_reference_model(with_kl(kl_placement="loss", kl_coef=0.04))
    assert not uses_reference_model(with_kl(kl_placement="none", kl_coef=0.04))
    assert not uses_reference_model(with_kl(kl_placement="loss", kl_coef=0.0))
    assert uses_reference_model(with_kl(kl_placement="reward", kl_coef=0.0, kl_schedule="linear",
                                        kl_coef_final=0.01))
    assert not uses_reference_model(with_kl(kl_placement="loss", kl_coef=0.0, kl_schedule="constant",
                                            kl_coef_final=0.01))


def test_a_fresh_run_refuses_an_output_dir_that_holds_another_run(tmp_path) -> None:
    from r1ray.controller.checkpoint import claim_output_dir

    out = tmp_path / "run"
    claim_output_dir(out, "never", overwrite=False)                    # nothing there yet
    (out / "checkpoints" / "step_000004").mkdir(parents=True)
    (out / "checkpoints" / "step_000004" / "COMPLETE").write_text("ok\n")
    (out / "metrics.jsonl").write_text('{"step": 4}\n')
    (out / "data").mkdir()
    with pytest.raises(ValueError) as info:
        claim_output_dir(out, "never", overwrite=False)
    assert str(info.value) == (f"trainer.output_dir {out}: already holds a run (checkpoints up to step_000004); continue "
                               f"it with trainer.resume=auto, write elsewhere with trainer.output_dir=..., or replace "
                               f"it with trainer.overwrite=true")
    assert (out / "metrics.jsonl").read_text() == '{"step": 4}\n'      # nothing touched
    claim_output_dir(out, "auto", overwrite=False)                     # resuming it is the point
    claim_output_dir(out, "never", overwrite=True)
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()
    assert (out / "data").is_dir()                                     # only the run's own outputs go
    claim_output_dir(out, "never", overwrite=False)


def test_resume_passes_over_damaged_checkpoints_to_the_previous_complete_one(tmp_path, caplog) -> None:
    """A deleted shard, a truncated file, a missing trainer_state.json, a bare COMPLETE marker: each is named,
    and the newest checkpoint without damage is the one resumed from."""
    import logging

    from r1ray.controller.checkpoint import damage

    manager = CheckpointManager(tmp_path / "checkpoints", keep=10)

    def write_actor(d: Path) -> None:
        d.mkdir(parents=True)
        for rank in range(2):
            (d / f"__{rank}_0.distcp").write_bytes(b"x" * 100)

    paths = [manager.save(TrainerState(step=s, sampler={"epoch": 0, "position": s}, run_id="r"),
                          write_actor=write_actor, model_path=str(tmp_path / "none"), config_yaml="{}\n")
             for s in (1, 2, 3, 4)]
    assert all(damage(p) is None for p in paths) and manager.latest_loadable() == paths[-1]
    (paths[3] / "actor" / "__1_0.distcp").unlink()                       # a shard deleted
    (paths[2] / "actor" / "__0_0.distcp").write_bytes(b"x" * 10)         # a file truncated
    (paths[1] / "trainer_state.json").unlink()                           # the state missing
    fake = tmp_path / "checkpoints" / "step_000005"                      # a marker and nothing else
    fake.mkdir()
    (fake / "COMPLETE").write_text("ok\n")
    with caplog.at_level(logging.WARNING, logger="r1ray.controller.checkpoint"):
        assert manager.latest_loadable() == paths[0]
    assert "step_000005 is damaged (trainer_state.json is missing)" in caplog.text
    assert "step_000004 is damaged (actor/__1_0.distcp is missing)" in caplog.text
    assert "step_000003 is damaged (actor/__0_0.distcp has 10 bytes, 100 were written)" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"damaged checkpoint \(actor/__1_0.distcp is missing\)"):
        read_checkpoint(paths[3])
    assert read_checkpoint(paths[0])[0].step == 1


def test_updates_that_skip_every_optimizer_step_stop_the_run_after_the_limit() -> None:
    from r1ray.controller.run_guards import watch_skipped
    from r1ray.errors import NonFiniteUpdates

    nan = {"actor/skipped_steps": 2.0, "actor/grad_norm": float("nan")}
    assert watch_skipped(0, nan, optimizer_steps=2, limit=3) == 1
    assert watch_skipped(1, {"actor/skipped_steps": 1.0}, optimizer_steps=2, limit=3) == 0   # one step was taken
    assert watch_skipped(1, nan, optimizer_steps=2, limit=3) == 2
    with pytest.raises(NonFiniteUpdates, match=r"not finite \(last grad norm nan\) in every optimizer step of 3 updates"):
        watch_skipped(2, nan, optimizer_steps=2, limit=3)


def test_the_placement_passed_in_decides_colocation_sync_backend_and_rollout_device(tmp_path: Path) -> None:
    """The Python API's placement, not the config's, picks the colocated cycle, the sync backend and the
    engines' device (issue 23 item 2): here the config keeps the rollout on a pool of its own, the
    placement passed in colocates it with the actor on a GPU pool."""
    from r1ray.controller.roles import colocated, rollout_spec, sync_backend
    from r1ray.controller.trainer import Trainer

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "configs" / "quickstart.yaml", ["stages=[]", f"trainer.output_dir={tmp_path}",
                                                              "placement.pools.gen.devices_per_node=1",
                                                              "placement.rollout=gen", "placement.reward=gen"])
    from_config = Placement.from_config(cfg.placement)
    assert not colocated(from_config) and sync_backend(from_config) == "gloo"
    shared = Placement(pools={"gpus": ResourcePool(devices_per_node=2, device="gpu")},
                       roles={"actor": "gpus", "ref": "gpus", "rollout": "gpus", "reward": "gpus"})
    trainer = Trainer(cfg, placement=shared)
    assert trainer.colocated                                  # the wake / sync / generate / sleep cycle
    assert sync_backend(trainer.placement) == "ipc"           # never NCCL between two processes on one GPU
    assert rollout_spec(cfg, trainer.placement).device == "gpu"
    assert rollout_spec(cfg).device == "cpu"                  # the config's own pool
    # Asynchronous GRPO refuses a placement that colocates, whatever the config says.
    with pytest.raises(ValueError, match=r"^trainer.max_staleness=1 needs the rollout engines on devices of their "
                                         r"own, but the placement puts rollout and actor in pool 'gpus'"):
        Trainer(replace(cfg, trainer=replace(cfg.trainer, max_staleness=1)), placement=shared)


@pytest.mark.parametrize(("assigned", "visible", "index"), [
    (["3"], "3", 0),                 # Ray narrowed CUDA_VISIBLE_DEVICES to the assigned GPU
    (["2"], None, 2),                # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: every GPU visible
    ([2], "0,1,2,3", 2),
    (["5"], "4,5", 1),               # a user's own subset, still not narrowed by Ray
])
def test_a_worker_takes_the_gpu_ray_assigned_not_gpu_0(assigned, visible, index) -> None:
    from r1ray.workers.base import gpu_index

    assert gpu_index(assigned, visible) == index


def test_a_rollout_worker_gets_its_engines_client_threads_only_where_the_engine_has_processes_of_its_own():
    from r1ray.workers.engines.base import RolloutSpec
    from r1ray.workers.role_groups import client_threads

    one = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # vLLM on a CPU pool with TP 1 computes in the worker's process: the placement's share stays.
    assert client_threads(RolloutSpec(engine="vllm", model_path="m", device="cpu")) == {}
    # Its own processes compute (TP workers on CPU, any GPU engine): the worker only drives them.
    assert client_threads(RolloutSpec(engine="vllm", model_path="m", device="cpu", tensor_parallel_size=2)) == one
    assert client_threads(RolloutSpec(engine="vllm", model_path="m", device="gpu")) == one
    assert client_threads(RolloutSpec(engine="hf", model_path="m", device="cpu")) == {}


def test_colocated_ipc_pairs_follow_the_gpu_uuids_not_the_bundle_order() -> None:
    """vLLM's TP rank t takes the t-th of its engine's GPUs, whichever bundle that GPU is: each engine
    worker pairs with the actor rank on the same GPU. Without UUIDs (CPU) the bundle order pairs them."""
    from r1ray.controller.roles import ipc_pairs
    from r1ray.workers.fingerprint import WeightSyncError

    assert ipc_pairs(["", "", "", ""], [["", ""], ["", ""]]) == [[0, 1], [2, 3]]
    assert ipc_pairs(["A", "B", "C", "D"], [["B", "A"], ["D", "C"]]) == [[1, 0], [3, 2]]
    assert ipc_pairs(["A", "B"], [["A"], ["B"]]) == [[0], [1]]
    with pytest.raises(WeightSyncError, match="engine 1 worker 0 on GPU E"):
        ipc_pairs(["A", "B"], [["A"], ["E"]])
    with pytest.raises(WeightSyncError, match="two workers share a GPU"):
        ipc_pairs(["A", "B"], [["A"], ["A"]])

