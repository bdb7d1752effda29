"""Building the four worker groups from the config and a Placement: the whole topology on one screen."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import ray

from r1ray.config import R1RayConfig
from r1ray.controller.shared_storage import check_shared_output
from r1ray.loss_spec import resolve_preset, uses_reference_model
from r1ray.memory_plan import token_budgets
from r1ray.rewards import RewardSpec
from r1ray.workers.engines import EngineSpec, RolloutSpec
from r1ray.workers.engines.base import vllm_sleep_level
from r1ray.workers.group import WorkerGroup, setup_groups, start_groups
from r1ray.workers.losses import LossSettings
from r1ray.workers.placement import Placement, WorkerSlot
from r1ray.workers.role_groups import (ActorGroup, RefGroup, RewardGroup, RolloutGroup, engine_slots,
                                      sync_world_size)
from r1ray.workers.fingerprint import WeightSyncError
from r1ray.workers.weight_sync import SyncGroupSpec

logger = logging.getLogger(__name__)


@dataclass
class Roles:
    actor: ActorGroup
    ref: RefGroup | None             # None when KL is off
    rollout: RolloutGroup
    reward: RewardGroup

    def all(self) -> list[WorkerGroup]:
        return [g for g in (self.actor, self.ref, self.rollout, self.reward) if g is not None]

    def shutdown(self) -> None:
        shutdown_groups(self.all())


def shutdown_groups(groups: list[WorkerGroup]) -> None:
    """Close workers (process groups, subprocess pools), kill them, and free their placement groups.

    Runs in `finally` blocks after a failure too: a worker that died (the failure being reported) cannot
    close, and re-raising its death here would print a second traceback over the first.
    """
    for group in groups:
        try:
            group.shutdown()
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
            logger.debug("role '%s': a worker could not shut down cleanly: %s", group.role, exc)
        finally:
            group.kill()
    remove_placement_groups([s for g in groups for s in g.slots])


def remove_placement_groups(slots: list[WorkerSlot]) -> None:
    for pg in {id(s.placement_group): s.placement_group for s in slots}.values():
        ray.util.remove_placement_group(pg)


def engine_spec(cfg: R1RayConfig, total_optimizer_steps: int) -> EngineSpec:
    a, m = cfg.actor, cfg.model
    return EngineSpec(
        model_path=m.path, dtype=m.dtype, attn_implementation=m.attn_implementation,
        trust_remote_code=m.trust_remote_code, lr=a.lr, weight_decay=a.weight_decay, betas=tuple(a.betas),
        warmup_steps=a.warmup_steps, lr_schedule=a.lr_schedule, min_lr_ratio=a.min_lr_ratio,
        total_optimizer_steps=total_optimizer_steps,
        micro_batch_tokens=a.micro_batch_tokens or token_budgets(cfg)[0][1],      # 0: the plan's first stage
        padding_free=a.padding_free,
        grad_clip=a.grad_clip, gradient_checkpointing=a.gradient_checkpointing, zero_stage=a.zero_stage,
        cpu_offload=a.cpu_offload, sequence_parallel_size=a.sequence_parallel_size, seed=cfg.trainer.seed)


def ref_engine_spec(cfg: R1RayConfig, actor: EngineSpec) -> EngineSpec:
    """The reference's spec: the actor's, from `model.ref_path` when set, with its own sequence parallelism."""
    a = cfg.actor
    return replace(actor, model_path=cfg.model.ref_path or actor.model_path,
                   sequence_parallel_size=a.ref_sequence_parallel_size or a.sequence_parallel_size)


def loss_settings(cfg: R1RayConfig) -> LossSettings:
    al = cfg.algorithm
    return LossSettings(clip_low=al.clip_low, clip_high=al.clip_high, dual_clip=al.dual_clip or None,
                        agg=al.loss_agg, norm_len=cfg.rollout.max_response_length, kl_kind=al.kl_kind,
                        kl_coef=al.kl_coef, entropy_coef=al.entropy_coef, policy_loss=al.policy_loss,
                        correction=resolve_preset(al.rollout_correction, al.rollout_correction_cap,
                                                  al.rollout_correction_band))


def reward_spec(cfg: R1RayConfig) -> RewardSpec:
    r = cfg.reward
    return RewardSpec(names=r.functions, weights=r.weights, sample_timeout_s=r.sample_timeout_s,
                      batch_timeout_s=r.batch_timeout_s, num_workers=r.processes, language=r.language)


def rollout_spec(cfg: R1RayConfig, placement: Placement | None = None) -> RolloutSpec:
    """The engines' spec; their device is that of the rollout's pool in `placement` (default: the config's)."""
    r, m = cfg.rollout, cfg.model
    placement = placement or Placement.from_config(cfg.placement)
    return RolloutSpec(
        engine=r.engine, model_path=m.path, dtype=m.dtype, max_model_len=r.max_prompt_length + r.max_response_length,
        seed=cfg.trainer.seed, device=placement.pools[placement.roles["rollout"]].device,
        trust_remote_code=m.trust_remote_code, attn_implementation=m.attn_implementation,
        generate_batch_size=r.generate_batch_size, tensor_parallel_size=r.tensor_parallel_size,
        gpu_memory_utilization=r.gpu_memory_utilization, sleep_level=vllm_sleep_level(r.free_cache_engine),
        cpu_kv_cache_gib=r.cpu_kv_cache_gib)


def build_rollout_group(cfg: R1RayConfig, slots: list, placement: Placement, wait: bool = True) -> RolloutGroup:
    spec = rollout_spec(cfg, placement)
    engines = engine_slots(slots, spec.tensor_parallel_size, on_gpu=spec.device == "gpu")
    return RolloutGroup(engines, spec, startup_timeout_s=cfg.trainer.startup_timeout_s,
                        collective_timeout_s=cfg.trainer.collective_timeout_s, wait=wait)


def build_reward_group(cfg: R1RayConfig, slots: list, wait: bool = True) -> RewardGroup:
    return RewardGroup(slots, reward_spec(cfg), startup_timeout_s=cfg.trainer.startup_timeout_s,
                       collective_timeout_s=cfg.trainer.collective_timeout_s, wait=wait)


def colocated(placement: Placement) -> bool:
    """Actor and rollout share devices: the step runs the wake / sync / generate / sleep cycle. Read from
    the placement the groups are built from (the Python API may pass one that differs from the config's)."""
    return placement.roles["rollout"] == placement.roles["actor"]


def ref_colocated(placement: Placement) -> bool:
    """The reference shares the rollout's devices: it holds them only for its own pass. (vLLM maps its
    whole KV cache at each wake, sized when the devices were empty.)"""
    return placement.roles.get("ref") == placement.roles["rollout"]


def build_roles(cfg: R1RayConfig, placement: Placement) -> Roles:
    """Reserve resources, start every group, build engines, and connect the weight-sync group."""
    use_ref = uses_reference_model(cfg)      # KL can be non-zero at some step
    if not use_ref and cfg.algorithm.kl_placement != "none":
        logger.info("algorithm.kl_coef is 0 at every step: no reference model, no reference pass")
    wanted = ["actor", "rollout", "reward"] + (["ref"] if use_ref else [])
    slots = placement.only(wanted).create(cfg.trainer.startup_timeout_s)
    started: list[WorkerGroup] = []
    try:
        check_shared_output(Path(cfg.trainer.output_dir), slots["actor"])
        roles = _start_roles(cfg, placement, slots, use_ref, started)
        connect_weight_sync(roles, cfg, placement)
    except BaseException:
        # A start that fails part-way (a late group, an engine that cannot load) frees what it took: the
        # restart that follows creates the placement groups again, under the same names.
        release(started, slots)
        raise
    return roles


def _start_roles(cfg: R1RayConfig, placement: Placement, slots: dict[str, list[WorkerSlot]], use_ref: bool,
                 started: list[WorkerGroup]) -> Roles:
    """Every group's workers started at once (`start_groups`), not one group after another, then their
    engines built; each group is appended to `started` as soon as it exists, for `release`."""
    t = cfg.trainer
    total_opt_steps = t.total_steps * cfg.algorithm.ppo_epochs * cfg.algorithm.mini_batches
    spec = engine_spec(cfg, total_opt_steps)
    actor = ActorGroup(slots["actor"], engine_kind=cfg.actor.engine, spec=spec, loss=loss_settings(cfg),
                       startup_timeout_s=t.startup_timeout_s, collective_timeout_s=t.collective_timeout_s, wait=False)
    started.append(actor)
    # model.ref_path: a reference other than the policy's starting weights (e.g. the base model under an SFT'd policy).
    ref_spec = ref_engine_spec(cfg, spec)
    ref = (RefGroup(slots["ref"], engine_kind=cfg.actor.engine, spec=ref_spec, startup_timeout_s=t.startup_timeout_s,
                    collective_timeout_s=t.collective_timeout_s, wait=False) if use_ref else None)
    started += [ref] if ref is not None else []
    rollout = build_rollout_group(cfg, slots["rollout"], placement, wait=False)
    started.append(rollout)
    reward = build_reward_group(cfg, slots["reward"], wait=False)
    started.append(reward)
    roles = Roles(actor, ref, rollout, reward)
    start_groups(roles.all())
    if colocated(placement):
        # vLLM sizes its KV cache from the free device memory it profiles at start-up: it must start (and
        # go to sleep) before the actor and reference load onto the same devices.
        setup_groups([roles.rollout], t.startup_timeout_s)
        roles.rollout.sleep()
        setup_groups([g for g in (actor, ref, roles.reward) if g is not None], t.startup_timeout_s)
        if ref is not None and ref_colocated(placement):
            ref.offload()                # onloaded for its pass only (`Trainer.with_logprobs`)
    else:
        setup_groups(roles.all(), t.startup_timeout_s)
    return roles


def release(groups: list[WorkerGroup], slots: dict[str, list[WorkerSlot]]) -> None:
    """After a failed start: kill the groups' workers (mid-setup, they would not answer a shutdown call) and
    remove every placement group of `slots`, which also ends any worker not yet in a group."""
    for group in groups:
        group.kill()
    remove_placement_groups([s for role_slots in slots.values() for s in role_slots])


def sync_backend(placement: Placement) -> str:
    """"ipc" when actor and engines share devices (NCCL refuses two ranks of a group on one GPU; on CPU the
    same path shares host memory); otherwise NCCL between GPUs, gloo on CPU."""
    if colocated(placement):
        return "ipc"
    return "nccl" if placement.pools[placement.roles["actor"]].device == "gpu" else "gloo"


def sync_layout(cfg: R1RayConfig, roles: Roles, placement: Placement) -> tuple[list[SyncGroupSpec | None], list[list[tuple[SyncGroupSpec, int]]]]:
    """Who sends to whom: (the group each actor rank sends to, or None; per engine, (group, sync rank) of
    each TP worker).

    Shared group: actor rank 0 sends to every engine worker (ranks 1 + engine x TP + TP rank).
    "ipc": actor and rollout slots are the same bundles, and each engine worker pairs with the actor rank
    on its GPU, a group of two (`ipc_pairs`).
    """
    tp, timeout = cfg.rollout.tensor_parallel_size, cfg.trainer.collective_timeout_s
    engines = roles.rollout.engines
    backend = sync_backend(placement)
    if backend == "ipc":
        specs = [SyncGroupSpec(master_addr=h, master_port=p, world_size=2, backend="ipc", timeout_s=timeout)
                 for h, p in roles.actor.addresses()]
        pairs = ipc_pairs(roles.actor.device_uuids(), roles.rollout.device_uuids())
        return specs, [[(specs[rank], 1) for rank in engine] for engine in pairs]
    host, port = roles.actor.address()
    spec = SyncGroupSpec(master_addr=host, master_port=port, world_size=sync_world_size(engines, tp),
                         backend=backend, timeout_s=timeout)
    return ([spec] + [None] * (roles.actor.world_size - 1),
            [[(spec, e.sync_rank_offset + t) for t in range(tp)] for e in engines])


def ipc_pairs(actor_uuids: list[str], worker_uuids: list[list[str]]) -> list[list[int]]:
    """For each engine and TP worker, the actor rank on its GPU (matched by UUID: vLLM's TP rank t takes
    the t-th of its engine's GPUs, not necessarily the t-th bundle's). Without UUIDs (CPU devices) the
    slots' order pairs them: TP worker t of engine e with the actor rank on bundle e x TP + t."""
    flat = [uuid for engine in worker_uuids for uuid in engine]
    if not all(flat) or not all(actor_uuids):
        order = iter(range(len(flat)))
        return [[next(order) for _ in engine] for engine in worker_uuids]
    rank_of = {uuid: rank for rank, uuid in enumerate(actor_uuids)}
    missing = [f"engine {e} worker {t} on GPU {uuid}" for e, engine in enumerate(worker_uuids)
               for t, uuid in enumerate(engine) if uuid not in rank_of]
    if missing or len(set(flat)) != len(flat):
        raise WeightSyncError(f"colocated weight sync: each rollout worker needs its own GPU holding an actor rank; "
                              f"{'; '.join(missing) or 'two workers share a GPU'} (actor ranks on "
                              f"{', '.join(actor_uuids)})")
    return [[rank_of[uuid] for uuid in engine] for engine in worker_uuids]


def connect_weight_sync(roles: Roles, cfg: R1RayConfig, placement: Placement) -> None:
    """Every actor rank that sends and every TP worker of every engine join their weight-sync group."""
    if colocated(placement):
        roles.rollout.wake(["weights"])      # vLLM's weight-transfer engine needs its workers awake
    actor_specs, members = sync_layout(cfg, roles, placement)
    ray.get([*roles.actor.init_weight_sync_async(actor_specs), *roles.rollout.init_weight_sync_async(members)])
    logger.info("weight sync ready: %s, %d sender(s), %d engine(s) x TP %d", actor_specs[0].backend,
                sum(s is not None for s in actor_specs), len(members), cfg.rollout.tensor_parallel_size)
