"""Building the four worker groups from the config and a Placement: the whole topology on one screen."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import ray

from r1ray.config import R1RayConfig
from r1ray.rewards import RewardSpec
from r1ray.workers.actor import ActorWorker
from r1ray.workers.engines import EngineSpec
from r1ray.workers.group import WorkerGroup
from r1ray.workers.losses import LossSettings
from r1ray.workers.placement import Placement
from r1ray.workers.ref import RefWorker
from r1ray.workers.reward import RewardWorker
from r1ray.workers.rollout import RolloutWorker
from r1ray.workers.weight_sync import SyncGroupSpec

logger = logging.getLogger(__name__)


@dataclass
class Roles:
    actor: WorkerGroup
    ref: WorkerGroup | None          # None when KL is off
    rollout: WorkerGroup
    reward: WorkerGroup

    def all(self) -> list[WorkerGroup]:
        return [g for g in (self.actor, self.ref, self.rollout, self.reward) if g is not None]

    def shutdown(self) -> None:
        shutdown_groups(self.all())


def shutdown_groups(groups: list[WorkerGroup]) -> None:
    """Close workers (process groups, subprocess pools), kill them, and free their placement groups."""
    for group in groups:
        try:
            group.call("shutdown")
        finally:
            group.kill()
    for pg in {id(s.placement_group): s.placement_group for g in groups for s in g.slots}.values():
        ray.util.remove_placement_group(pg)


def engine_spec(cfg: R1RayConfig, total_optimizer_steps: int) -> EngineSpec:
    a, m = cfg.actor, cfg.model
    return EngineSpec(
        model_path=m.path, dtype=m.dtype, attn_implementation=m.attn_implementation,
        trust_remote_code=m.trust_remote_code, lr=a.lr, weight_decay=a.weight_decay, betas=tuple(a.betas),
        warmup_steps=a.warmup_steps, lr_schedule=a.lr_schedule, min_lr_ratio=a.min_lr_ratio,
        total_optimizer_steps=total_optimizer_steps, micro_batch_tokens=a.micro_batch_tokens,
        grad_clip=a.grad_clip, gradient_checkpointing=a.gradient_checkpointing, zero_stage=a.zero_stage,
        cpu_offload=a.cpu_offload, seed=cfg.trainer.seed)


def loss_settings(cfg: R1RayConfig) -> LossSettings:
    al = cfg.algorithm
    return LossSettings(clip_low=al.clip_low, clip_high=al.clip_high, dual_clip=al.dual_clip or None,
                        agg=al.loss_agg, norm_len=cfg.rollout.max_response_length, kl_kind=al.kl_kind,
                        kl_coef=al.kl_coef, entropy_coef=al.entropy_coef)


def reward_spec(cfg: R1RayConfig) -> RewardSpec:
    r = cfg.reward
    return RewardSpec(names=r.functions, weights=r.weights, sample_timeout_s=r.sample_timeout_s,
                      batch_timeout_s=r.batch_timeout_s, num_workers=r.processes)


def rollout_kwargs(cfg: R1RayConfig) -> dict:
    r, m = cfg.rollout, cfg.model
    if r.engine == "vllm":
        return dict(model_path=m.path, dtype=m.dtype, tensor_parallel_size=r.tensor_parallel_size,
                    gpu_memory_utilization=r.gpu_memory_utilization,
                    max_model_len=r.max_prompt_length + r.max_response_length, seed=cfg.trainer.seed,
                    enable_sleep_mode=r.free_cache_engine, trust_remote_code=m.trust_remote_code)
    return dict(model_path=m.path, dtype=m.dtype, attn_implementation=m.attn_implementation,
                generate_batch_size=r.generate_batch_size, trust_remote_code=m.trust_remote_code)


def build_roles(cfg: R1RayConfig, placement: Placement) -> Roles:
    """Reserve resources, start every group, build engines, and connect the weight-sync group."""
    use_ref = cfg.algorithm.kl_placement != "none"
    wanted = ["actor", "rollout", "reward"] + (["ref"] if use_ref else [])
    slots = placement.only(wanted).create(cfg.trainer.startup_timeout_s)
    timeout = cfg.trainer.startup_timeout_s
    total_opt_steps = cfg.trainer.total_steps * cfg.algorithm.ppo_epochs * cfg.algorithm.mini_batches
    spec = engine_spec(cfg, total_opt_steps)
    tp = cfg.rollout.tensor_parallel_size
    actor = WorkerGroup("actor", ActorWorker, slots["actor"], startup_timeout_s=timeout, distributed=True,
                        init_kwargs=dict(engine_kind=cfg.actor.engine, spec=spec, loss=loss_settings(cfg)))
    ref = (WorkerGroup("ref", RefWorker, slots["ref"], startup_timeout_s=timeout, distributed=True,
                       init_kwargs=dict(engine_kind=cfg.actor.engine, spec=spec)) if use_ref else None)
    # A vLLM engine with tensor parallelism spans tp bundles; its actor sits on the first of them.
    rollout = WorkerGroup("rollout", RolloutWorker, slots["rollout"][::tp], startup_timeout_s=timeout,
                          distributed=False, init_kwargs=dict(engine_kind=cfg.rollout.engine,
                                                             engine_kwargs=rollout_kwargs(cfg)))
    reward = WorkerGroup("reward", RewardWorker, slots["reward"], startup_timeout_s=timeout, distributed=False,
                         init_kwargs=dict(spec=reward_spec(cfg)))
    roles = Roles(actor, ref, rollout, reward)
    ray.get([ref for group in roles.all() for ref in group.call_async("setup")])
    connect_weight_sync(roles, cfg)
    return roles


def connect_weight_sync(roles: Roles, cfg: R1RayConfig) -> None:
    """Actor rank 0 (sync rank 0) and every rollout engine join one dedicated group."""
    host, port = ray.get(roles.actor.call_rank0_async("address"))
    gpu = cfg.placement.pools[cfg.placement.actor].device == "gpu"
    spec = SyncGroupSpec(master_addr=host, master_port=port,
                         world_size=1 + roles.rollout.world_size * cfg.rollout.tensor_parallel_size,
                         backend="nccl" if gpu else "gloo", timeout_s=cfg.trainer.collective_timeout_s)
    refs = [roles.actor.call_rank0_async("init_weight_sync", spec)] + roles.rollout.call_async("init_weight_sync", spec)
    ray.get(refs)
    logger.info("weight-sync group ready: %s:%d, %d ranks, %s", spec.master_addr, spec.master_port,
                spec.world_size, spec.backend)

