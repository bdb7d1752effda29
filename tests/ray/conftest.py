"""An actor group (2 FSDP2 ranks over gloo) and a rollout worker (HF generate) joined by a weight-sync
group, plus one real GRPO update on a real rollout: shared by the weight-sync and FSDP2 engine tests so
their worker processes start once.

The groups take a quarter CPU per worker, so that a Trainer's placement (3 CPUs) still fits in the
session cluster while they are alive.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import pytest
import ray
import torch

from r1ray.controller.advantage import build_train_batch
from r1ray.controller.roles import engine_spec, loss_settings, rollout_kwargs, shutdown_groups
from r1ray.controller.run_setup import build_datasets, prepare_files, prompt_batch
from r1ray.protocol import RolloutBatch, SamplingParams, TrainBatch
from r1ray.workers.actor import ActorWorker
from r1ray.workers.group import WorkerGroup
from r1ray.workers.placement import Placement, ResourcePool
from r1ray.workers.rollout import RolloutWorker
from r1ray.workers.weight_sync import Manifest, SyncGroupSpec, checksum_of

# Small buckets so the tiny model travels in many of them, the embedding (33 KB) alone in its own.
BUCKET_BYTES = 4096
CPU_SHARE = 0.25


class ProbedRolloutWorker(RolloutWorker):
    """The real rollout worker, plus test probes: damage one weight in place (as a faulty loader would)
    and hash what the engine holds, exactly as `receive_weights` does after loading."""

    def perturb(self, name: str) -> None:
        with torch.no_grad():
            dict(self.engine.named_weights())[name].view(-1)[0] += 1.0

    def held_checksum(self, manifest: Manifest) -> str:
        return checksum_of(manifest, dict(self.engine.named_weights()))


# Ray workers cannot import this conftest: ship the class above by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass
class ActorRollout:
    cfg: object
    actor: WorkerGroup
    rollout: WorkerGroup
    manifest: Manifest
    batch: TrainBatch                     # a TrainBatch from a real rollout, with reward spread in every group
    initial: dict[str, torch.Tensor]      # actor full weights before the update
    updated: dict[str, torch.Tensor]      # actor full weights after one update on `batch`
    update_metrics: list[dict[str, float]]
    bucket_bytes: int = BUCKET_BYTES

    def start_actor(self, **spec_changes) -> WorkerGroup:
        """Another 2-rank actor group from the same model, its engine spec changed as given; the caller
        frees it with `stop`."""
        slots = _slots("actor", "extra_train", 2)
        return _actor_group(self.cfg, slots, **spec_changes)

    @staticmethod
    def stop(group: WorkerGroup) -> None:
        shutdown_groups([group])

    def sync(self) -> tuple[str, list[str]]:
        """Actor -> rollout, as the Trainer does it; returns (sender checksum, receiver checksums)."""
        send = self.actor.call_async("send_weights", self.manifest)
        receive = self.rollout.call_async("receive_weights", self.manifest)
        return ray.get(send)[0], ray.get(receive)


def _slots(role: str, pool: str, size: int):
    placement = Placement(pools={pool: ResourcePool(devices_per_node=size, cpus_per_bundle=CPU_SHARE)},
                          roles={role: pool})
    return placement.create(timeout_s=60)[role]


def _actor_group(cfg, slots, **spec_changes) -> WorkerGroup:
    spec = replace(engine_spec(cfg, total_optimizer_steps=cfg.trainer.total_steps), **spec_changes)
    group = WorkerGroup("actor", ActorWorker, slots, startup_timeout_s=120, distributed=True,
                        init_kwargs=dict(engine_kind="fsdp2", spec=spec, loss=loss_settings(cfg)))
    group.call("setup")
    return group


def _train_batch(cfg, rollout: RolloutBatch) -> TrainBatch:
    """GRPO advantages from a score with spread in every group: the sampler's own sequence logprob
    (a random tiny model earns no task reward, and zero advantages would make the update a no-op)."""
    scores = (rollout.rollout_logprobs * rollout.response_mask()).sum(-1)
    return build_train_batch(rollout, scores, cfg.algorithm, kl_coef=0.0, ref_logprobs=None, old_logprobs=None)


@pytest.fixture(scope="session")
def actor_rollout(ray_cluster, small_config, tmp_path_factory):
    cfg = prepare_files(small_config(tmp_path_factory.mktemp("sync_run")))
    actor = _actor_group(cfg, _slots("actor", "sync_train", 2))
    rollout = WorkerGroup("rollout", ProbedRolloutWorker, _slots("rollout", "sync_gen", 1), startup_timeout_s=120,
                          distributed=False, init_kwargs=dict(engine_kind="hf", engine_kwargs=rollout_kwargs(cfg)))
    rollout.call("setup")
    # The controller's connect_weight_sync, with small buckets to exercise the bucketed path.
    host, port = ray.get(actor.call_rank0_async("address"))
    spec = SyncGroupSpec(master_addr=host, master_port=port, world_size=2, backend="gloo", timeout_s=60,
                         bucket_bytes=BUCKET_BYTES)
    ray.get([actor.call_rank0_async("init_weight_sync", spec), *rollout.call_async("init_weight_sync", spec)])
    manifest = ray.get(actor.call_rank0_async("weight_manifest", cfg.model.dtype))

    data = build_datasets(cfg)
    prompts = prompt_batch(data.train.batch([0, 1]))
    sampling = SamplingParams(n=cfg.rollout.n, temperature=1.0, max_new_tokens=cfg.rollout.max_response_length, seed=3)
    generated = ray.get(rollout.call_async("generate", prompts, sampling))[0]
    batch = _train_batch(cfg, generated)
    initial = actor.call("full_weights")[0]
    metrics = ray.get(actor.scatter_async("update", batch, temperature=1.0, kl_coef=0.0, mini_batches=1, ppo_epochs=1))
    updated = actor.call("full_weights")[0]
    yield ActorRollout(cfg, actor, rollout, manifest, batch, initial, updated, metrics)
    shutdown_groups([actor, rollout])
