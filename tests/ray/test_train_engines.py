"""The same contract tests for every TrainEngine: FSDP2 and DeepSpeed ZeRO-2 / ZeRO-3, 2 gloo ranks each.

Per engine, one actor group trains two steps on batches from a real rollout (saving a checkpoint after the
first), syncs its weights into an HF rollout engine and exports them; then its workers build a new engine,
which loads the checkpoint and takes the second step again, and rebuild it with a small token budget to
take the first step once more, then (ZeRO-3) again with sequence parallelism 2. The tests check what those runs
recorded: (a) the update does not depend on the micro-batch cut, (b) the sync is bit-exact, (c) a resumed
step is the continued one bit for bit, (d) the export loads with `from_pretrained`, (e) FSDP2 and
DeepSpeed compute the same loss and take the same step from the same weights and batch, (f) ZeRO-3 at
sequence parallel 2 computes the logprobs and takes the step of 1; and a NaN gradient skips the step,
weights untouched.
"""

from __future__ import annotations

import gc
import importlib.util
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from r1ray.controller.advantage import build_train_batch
from r1ray.controller.roles import engine_spec, loss_settings, rollout_spec, shutdown_groups
from r1ray.controller.run_setup import build_datasets, prepare_files, prompt_batch
from r1ray.protocol import SamplingParams, TrainBatch
from r1ray.workers.actor import ActorWorker
from r1ray.workers.fingerprint import verify_fingerprints
from r1ray.workers.placement import Placement, ResourcePool
from r1ray.workers.role_groups import ActorGroup, RolloutGroup, engine_slots
from r1ray.workers.rollout import RolloutWorker
from r1ray.workers.weight_sync import SyncGroupSpec, bucket_plan

pytestmark = pytest.mark.timeout(600)

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
# engine id -> (actor.engine, EngineSpec changes)
ENGINES = {"fsdp2": ("fsdp2", {}), "deepspeed-zero2": ("deepspeed", {"zero_stage": 2}),
           "deepspeed-zero3": ("deepspeed", {"zero_stage": 3})}
NO_DEEPSPEED = "DeepSpeed is not installed (DS_BUILD_OPS=0 pip install deepspeed==0.19.8)"


def _engine_params(ids):
    return [pytest.param(e, marks=pytest.mark.skipif(e.startswith("deepspeed") and not HAS_DEEPSPEED,
                                                     reason=NO_DEEPSPEED)) for e in ids]


# A schedule that moves every step (warmup, then cosine), so that a resume must restore it.
SCHEDULE = {"warmup_steps": 1, "lr_schedule": "cosine", "total_optimizer_steps": 4}
# Under one sequence (prompt up to 48 + response up to 16 tokens): one micro-batch per sequence, and a
# rank with fewer rows than the agreed count runs dummy passes.
SMALL_BUDGET = 40
BUCKET_BYTES = 4096
CPU_SHARE = 0.25

# Each engine's update differs from FSDP2's only in the order of float32 additions (DeepSpeed reduces
# flattened buckets, ZeRO-3 takes the norm in float64, micro-batches accumulate in another order), so
# nothing here is compared bit for bit across engines or cuts. Losses and logprobs come from the same
# forward on the same weights (measured: equal to the last bit; allowed: 1e-6 relative); gradient norms
# agree to rounding (measured: 1e-7 relative; allowed: 1e-5). Adam's first steps move a weight by about
# lr * sign(g), so a rounding difference only shows where |g| is near Adam's eps: every weight within
# lr / 10 (a mis-weighted micro-batch flips signs and moves weights by up to 2 lr), and all but a handful
# of elements within 1e-7 (measured: none off, largest difference 4e-8).
GRAD_NORM_RTOL = 1e-5
LOSS_RTOL = 1e-6
ELEMENT_ATOL = 1e-7
OFF_ELEMENTS = 10
STEP_KEYS = {"actor/grad_norm", "actor/lr", "actor/skipped_steps"}     # the engine's; the rest are the loss's
# Sequence parallelism lives in the loop both engines share; FSDP2's is tested in test_fsdp2_engine.py
# (with activation checkpointing), ZeRO-3 (partitioned parameters gathered around the all-to-alls) here.
SEQUENCE_PARALLEL_ENGINES = ["deepspeed-zero3"]


class ProbedActorWorker(ActorWorker):
    """The real actor worker, plus a probe that rebuilds its engine in place with another spec."""

    def rebuild(self, **spec_changes) -> None:
        self.engine = None
        gc.collect()
        self.spec = replace(self.spec, **spec_changes)
        self.setup()


class ProbedRolloutWorker(RolloutWorker):
    """The real rollout worker (HF engine), plus test probes: read its weights back, leave a sync group."""

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: t.detach().cpu().clone() for name, t in self.engine.model.named_parameters()}

    def leave_weight_sync(self) -> None:
        self.engine.close()


# Ray workers cannot import this test module: ship the classes above by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass
class EngineRun:
    """What one engine did; weights are full weights on CPU by name."""

    initial: dict
    step1: list[dict]                   # per-rank metrics of the update on batch 1
    after1: dict
    step2: list[dict]                   # ... on batch 2, continuing
    after2: dict
    checkpoint: Path                    # saved after step 1
    resumed2: list[dict]                # a new engine loaded `checkpoint` and updated on batch 2
    resumed_after2: dict
    small_initial: dict                 # the engine rebuilt with SMALL_BUDGET, from the model on disk
    small_step1: list[dict]
    small_after1: dict
    poisoned: list[dict]                # then an update with NaN advantages
    after_poisoned: dict
    sp_logprobs: torch.Tensor | None    # rebuilt again with sequence_parallel_size=2: logprobs of batch 1
    sp_step1: list[dict]                # ... and the update on it
    sp_after1: dict
    manifest: list
    sync: tuple                         # (sent fingerprints, received tables, rollout weights)
    export: Path


def _slots(role: str, pool: str, size: int):
    placement = Placement(pools={pool: ResourcePool(devices_per_node=size, cpus_per_bundle=CPU_SHARE)},
                          roles={role: pool}, threads_per_worker=1)
    return placement.create(timeout_s=60)[role]


def _start_actor(cfg, engine: str, pool: str) -> ActorGroup:
    kind, changes = ENGINES[engine]
    spec = replace(engine_spec(cfg, total_optimizer_steps=SCHEDULE["total_optimizer_steps"]), **SCHEDULE, **changes)
    group = ActorGroup(_slots("actor", pool, 2), engine_kind=kind, spec=spec, loss=loss_settings(cfg),
                       startup_timeout_s=180, collective_timeout_s=180, worker_cls=ProbedActorWorker)
    try:
        group.setup()
    except BaseException:
        shutdown_groups([group])
        raise
    return group


def _update(group: ActorGroup, batch: TrainBatch) -> list[dict]:
    return ray.get(group.update_async(batch, temperature=1.0, kl_coef=0.0, mini_batches=1, ppo_epochs=1))


def _sync(actor: ActorGroup, rollout: RolloutGroup, manifest: list) -> tuple:
    """Join `actor` rank 0 and the rollout engine in a fresh gloo sync group and sync once, as the Trainer
    does; returns (sent fingerprints, received tables, the rollout engine's weights)."""
    host, port = actor.address()
    spec = SyncGroupSpec(master_addr=host, master_port=port, world_size=2, backend="gloo", timeout_s=60,
                         bucket_bytes=BUCKET_BYTES)
    ray.get([*actor.init_weight_sync_async([spec, None]), *rollout.init_weight_sync_async([[(spec, 1)]])])
    try:
        send = actor.send_weights_async(manifest)
        receive = rollout.receive_weights_async(manifest)
        sent, received = ray.get(send)[0], [t for per_engine in ray.get(receive) for t in per_engine]
        return sent, received, ray.get(rollout.workers[0].weights.remote())
    finally:
        ray.get(rollout.workers[0].leave_weight_sync.remote())


@pytest.fixture(scope="module")
def setting(ray_cluster, small_config, tmp_path_factory):
    """The run's config, the rollout engine (sync receiver) and two train batches from its rollouts."""
    cfg = prepare_files(small_config(tmp_path_factory.mktemp("engines_run")))
    rollout = RolloutGroup(engine_slots(_slots("rollout", "engines_gen", 1), 1, on_gpu=False), rollout_spec(cfg),
                           startup_timeout_s=180, collective_timeout_s=180, worker_cls=ProbedRolloutWorker)
    rollout.setup()
    data = build_datasets(cfg)
    batches = []
    for seed, rows in ((3, [0, 1]), (4, [2, 3])):
        sampling = SamplingParams(n=cfg.rollout.n, temperature=1.0, max_new_tokens=cfg.rollout.max_response_length,
                                  seed=seed)
        generated = rollout.generate(prompt_batch(data.train.batch(rows)), sampling)
        # A random tiny model earns no task reward: the sampler's own sequence logprob gives every group
        # spread, so the advantages (and the update) are not zero.
        scores = (generated.rollout_logprobs * generated.response_mask()).sum(-1)
        batches.append(build_train_batch(generated, scores, cfg.algorithm, kl_coef=0.0))
    yield cfg, rollout, batches
    shutdown_groups([rollout])


@pytest.fixture(scope="module")
def runs(setting, tmp_path_factory):
    """engine id -> its EngineRun, made on first use (one engine's groups alive at a time)."""
    cfg, rollout, (batch1, batch2) = setting
    done: dict[str, EngineRun] = {}

    def get(engine: str) -> EngineRun:
        if engine not in done:
            done[engine] = _run_engine(cfg, rollout, batch1, batch2, engine, tmp_path_factory.mktemp(engine))
        return done[engine]

    return get


def _run_engine(cfg, rollout: RolloutGroup, batch1: TrainBatch, batch2: TrainBatch, engine: str,
                out: Path) -> EngineRun:
    checkpoint = out / "checkpoint"
    actor = _start_actor(cfg, engine, engine)
    try:
        initial = actor.full_weights()
        step1 = _update(actor, batch1)
        after1 = actor.full_weights()
        actor.save(checkpoint)
        step2 = _update(actor, batch2)
        after2 = actor.full_weights()
        manifest = actor.weight_manifest(cfg.model.dtype)
        sync = _sync(actor, rollout, manifest)
        export = actor.save_hf(out / "hf")
        # A new engine from the model on disk, built in the same workers (a second group would cost another
        # start of every rank), loads the checkpoint: nothing of the first engine's state is left to help it.
        ray.get([w.rebuild.remote() for w in actor.workers])
        actor.load(checkpoint)
        resumed2 = _update(actor, batch2)
        resumed_after2 = actor.full_weights()
        ray.get([w.rebuild.remote(micro_batch_tokens=SMALL_BUDGET) for w in actor.workers])
        small_initial = actor.full_weights()
        small_step1 = _update(actor, batch1)
        small_after1 = actor.full_weights()
        poisoned = _update(actor, replace(batch1, advantages=torch.full_like(batch1.advantages, float("nan"))))
        after_poisoned = actor.full_weights()
        sp_logprobs, sp_step1, sp_after1 = None, [], {}
        if engine in SEQUENCE_PARALLEL_ENGINES:
            # Sequence parallel (Ulysses) over the same 2 ranks, with the small per-rank budget still set.
            ray.get([w.rebuild.remote(sequence_parallel_size=2) for w in actor.workers])
            sp_logprobs = torch.cat(ray.get(actor.compute_logprobs_async(batch1, 1.0)))
            sp_step1 = _update(actor, batch1)
            sp_after1 = actor.full_weights()
    finally:
        shutdown_groups([actor])
    return EngineRun(initial, step1, after1, step2, after2, checkpoint, resumed2, resumed_after2, small_initial,
                     small_step1, small_after1, poisoned, after_poisoned, sp_logprobs, sp_step1, sp_after1, manifest,
                     sync, export)


def _assert_same_update(got: dict, want: dict, lr: float) -> None:
    assert sorted(got) == sorted(want)
    off = 0
    for name, tensor in want.items():
        assert torch.allclose(got[name], tensor, rtol=0, atol=lr / 10), name
        off += int(((got[name] - tensor).abs() > ELEMENT_ATOL).sum())
    assert off <= OFF_ELEMENTS, off


def _assert_equal_weights(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name, tensor in want.items():
        assert torch.equal(got[name], tensor), name


@pytest.mark.parametrize("engine", _engine_params(ENGINES))
def test_the_update_does_not_depend_on_the_micro_batch_cut(runs, setting, engine):
    cfg, _, (batch1, _) = setting
    run = runs(engine)
    # The cut really differs: one micro-batch per rank against one per sequence (and dummy passes).
    lengths = batch1.seq_lens.tolist()
    assert sum(lengths[:len(lengths) // 2]) <= cfg.actor.micro_batch_tokens and max(lengths) > SMALL_BUDGET
    _assert_equal_weights(run.small_initial, run.initial)
    for got, want in zip(run.small_step1, run.step1):
        # (The loss metrics are means over micro-batches, so they follow the cut; the gradient may not.)
        assert got["actor/grad_norm"] == pytest.approx(want["actor/grad_norm"], rel=GRAD_NORM_RTOL)
        assert got["actor/lr"] == want["actor/lr"] and got["actor/skipped_steps"] == 0.0
    assert all(not torch.equal(run.after1[n], run.initial[n]) for n in run.initial)     # the step moved them
    _assert_same_update(run.small_after1, run.after1, lr=cfg.actor.lr)


@pytest.mark.parametrize("engine", _engine_params(SEQUENCE_PARALLEL_ENGINES))
def test_sequence_parallel_2_computes_the_logprobs_and_takes_the_step_of_1(runs, setting, engine):
    """Ulysses in each engine: the 2 ranks split every sequence of their gathered rows; the logprobs are
    the sampler's and the step is the one the engine took on the same batch without it (float32 rounding
    of the split projections aside)."""
    cfg, _, (batch1, _) = setting
    run = runs(engine)
    mask = batch1.response_mask.bool()
    assert run.sp_logprobs.shape == mask.shape
    assert torch.allclose(run.sp_logprobs[mask], batch1.rollout_logprobs[mask], atol=1e-5)
    for got, want in zip(run.sp_step1, run.step1):
        assert got["actor/grad_norm"] == pytest.approx(want["actor/grad_norm"], rel=GRAD_NORM_RTOL)
        assert got["actor/lr"] == want["actor/lr"] and got["actor/skipped_steps"] == 0.0
    _assert_same_update(run.sp_after1, run.after1, lr=cfg.actor.lr)


@pytest.mark.parametrize("engine", _engine_params(ENGINES))
def test_a_non_finite_gradient_skips_the_step_and_leaves_the_weights(runs, engine):
    run = runs(engine)
    assert all(m["actor/skipped_steps"] == 1.0 and not math.isfinite(m["actor/grad_norm"]) for m in run.poisoned)
    _assert_equal_weights(run.after_poisoned, run.small_after1)


@pytest.mark.parametrize("engine", _engine_params(ENGINES))
def test_the_weight_sync_gives_the_rollout_engine_the_actors_weights_bit_for_bit(runs, engine):
    run = runs(engine)
    sent, received, held = run.sync
    names = [name for name, _, _ in run.manifest]
    assert len(bucket_plan(run.manifest, BUCKET_BYTES)) > 3          # really bucketed
    verify_fingerprints(names, sent, received, ["rollout engine 0 worker 0"])
    # Full shapes also where ZeRO-3 partitions the parameters; tied embeddings travel once.
    assert [(name, shape) for name, shape, _ in run.manifest] == [(n, tuple(run.after2[n].shape)) for n in names]
    assert "lm_head.weight" not in names and sorted(held) == sorted(names)
    for name in names:
        assert held[name].dtype == run.after2[name].dtype == torch.float32, name
        assert torch.equal(held[name], run.after2[name]), name
    assert torch.equal(run.after2["lm_head.weight"], held["model.embed_tokens.weight"])


@pytest.mark.parametrize("engine", _engine_params(ENGINES))
def test_a_new_engine_resumed_from_the_checkpoint_takes_the_continued_step(runs, engine):
    run = runs(engine)
    assert [m["actor/lr"] for m in run.step1] != [m["actor/lr"] for m in run.step2]     # the schedule moved
    for got, want in zip(run.resumed2, run.step2):
        assert got == want
    _assert_equal_weights(run.resumed_after2, run.after2)


@pytest.mark.parametrize("engine", _engine_params(["deepspeed-zero2", "deepspeed-zero3"]))
def test_the_deepspeed_checkpoint_holds_the_float32_master_weights(runs, engine):
    """What an export of a DeepSpeed checkpoint reads: DeepSpeed's own reader reassembles the saved float32
    master weights from every rank's partition, equal to the actor's full weights at the save."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from r1ray.workers.engines.deepspeed_engine import CHECKPOINT_TAG

    run = runs(engine)
    saved = get_fp32_state_dict_from_zero_checkpoint(str(run.checkpoint), tag=CHECKPOINT_TAG)
    assert set(saved) <= set(run.after1) and set(run.after1) - set(saved) <= {"lm_head.weight"}
    for name, tensor in saved.items():
        assert torch.equal(tensor, run.after1[name]), name


@pytest.mark.parametrize("engine", _engine_params(ENGINES))
def test_the_export_loads_with_from_pretrained_and_equals_the_full_weights(runs, engine):
    run = runs(engine)
    exported = AutoModelForCausalLM.from_pretrained(run.export, dtype=torch.float32).state_dict()
    _assert_equal_weights(exported, run.after2)


@pytest.mark.parametrize("engine", _engine_params(["deepspeed-zero2", "deepspeed-zero3"]))
def test_deepspeed_and_fsdp2_take_the_same_step_from_the_same_weights(runs, setting, engine):
    cfg = setting[0]
    fsdp2, other = runs("fsdp2"), runs(engine)
    _assert_equal_weights(other.initial, fsdp2.initial)              # both built from the checkpoint
    for got, want in zip(other.step1, fsdp2.step1):
        assert sorted(got) == sorted(want)
        for key in set(want) - STEP_KEYS:          # pg_loss, entropy, clip fractions, logprob gap, ...
            assert got[key] == pytest.approx(want[key], rel=LOSS_RTOL, abs=1e-9), key
        assert got["actor/grad_norm"] == pytest.approx(want["actor/grad_norm"], rel=GRAD_NORM_RTOL)
        assert got["actor/lr"] == want["actor/lr"] and got["actor/skipped_steps"] == 0.0
        assert math.isfinite(got["actor/grad_norm"]) and got["actor/grad_norm"] > 0
    _assert_same_update(other.after1, fsdp2.after1, lr=cfg.actor.lr)
    _assert_same_update(other.after2, fsdp2.after2, lr=cfg.actor.lr)
