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
from r1ray.controller.roles import engine_spec, loss_settings, rollout_spec, shutdown_groups
from r1ray.controller.run_setup import build_datasets, prepare_files, prompt_batch
from r1ray.models import DTYPES
from r1ray.protocol import RolloutBatch, SamplingParams, TrainBatch
from r1ray.workers.fingerprint import Fingerprints
from r1ray.workers.placement import Placement, ResourcePool
from r1ray.workers.role_groups import ActorGroup, RolloutGroup, engine_slots
from r1ray.workers.rollout import RolloutWorker
from r1ray.workers.weight_sync import Manifest, SyncGroupSpec

# Small buckets so the tiny model travels in many of them, the embedding (33 KB) alone in its own.
BUCKET_BYTES = 4096
CPU_SHARE = 0.25


class ProbedRolloutWorker(RolloutWorker):
    """The real rollout worker (HF engine), plus test probes: damage one weight in place (as a faulty
    loader would), fingerprint what the engine holds exactly as `receive_weights` does after loading,
    and read the weights back."""

    def perturb(self, name: str) -> None:
        with torch.no_grad():
            dict(self.engine.model.named_parameters())[name].view(-1)[0] += 1.0

    def held_fingerprints(self, manifest: Manifest) -> list[list[int]]:
        held = self.engine.model.state_dict()
        prints = Fingerprints(len(manifest), self.device)
        for i, (name, _, dtype) in enumerate(manifest):
            prints.add(i, held[name].to(DTYPES[dtype]))
        return prints.tolist()

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: t.detach().cpu().clone() for name, t in self.engine.model.named_parameters()}


# Ray workers cannot import this conftest: ship the class above by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass
class ActorRollout:
    cfg: object
    actor: ActorGroup
    rollout: RolloutGroup
    manifest: Manifest
    batch: TrainBatch                     # a TrainBatch from a real rollout, with reward spread in every group
    initial: dict[str, torch.Tensor]      # actor full weights before the update
    updated: dict[str, torch.Tensor]      # actor full weights after one update on `batch`
    update_metrics: list[dict[str, float]]
    bucket_bytes: int = BUCKET_BYTES

    def start_actor(self, **spec_changes) -> ActorGroup:
        """Another 2-rank actor group from the same model, its engine spec changed as given; the caller
        frees it with `stop`."""
        slots = _slots("actor", "extra_train", 2)
        return _actor_group(self.cfg, slots, **spec_changes)

    @staticmethod
    def stop(group) -> None:
        shutdown_groups([group])

    def sync(self) -> tuple[list[list[int]], list[list[list[int]]]]:
        """Actor -> rollout, as the Trainer does it; returns (sent fingerprints, one table per engine
        worker)."""
        send = self.actor.send_weights_async(self.manifest)
        receive = self.rollout.receive_weights_async(self.manifest)
        return ray.get(send)[0], [t for per_engine in ray.get(receive) for t in per_engine]


def _slots(role: str, pool: str, size: int):
    placement = Placement(pools={pool: ResourcePool(devices_per_node=size, cpus_per_bundle=CPU_SHARE)},
                          roles={role: pool}, threads_per_worker=1)
    return placement.create(timeout_s=60)[role]


def _actor_group(cfg, slots, engine_kind: str = "fsdp2", **spec_changes) -> ActorGroup:
    spec = replace(engine_spec(cfg, total_optimizer_steps=cfg.trainer.total_steps), **spec_changes)
    group = ActorGroup(slots, engine_kind=engine_kind, spec=spec, loss=loss_settings(cfg), startup_timeout_s=120,
                       collective_timeout_s=120)
    group.setup()
    return group


def probed_rollout_group(cfg, slots) -> RolloutGroup:
    """The controller's rollout group with the probed worker class."""
    return RolloutGroup(engine_slots(slots, 1, on_gpu=False), rollout_spec(cfg), startup_timeout_s=120,
                        collective_timeout_s=120, worker_cls=ProbedRolloutWorker)


def _train_batch(cfg, rollout: RolloutBatch) -> TrainBatch:
    """GRPO advantages from a score with spread in every group: the sampler's own sequence logprob
    (a random tiny model earns no task reward, and zero advantages would make the update a no-op)."""
    scores = (rollout.rollout_logprobs * rollout.response_mask()).sum(-1)
    return build_train_batch(rollout, scores, cfg.algorithm, kl_coef=0.0)


@pytest.fixture
def new_placement_groups(ray_cluster):
    """A function: the names of the placement groups the cluster holds (or waits to place) now that it did not
    hold when the test started; a test that fails to start something must leave none."""
    def held() -> dict[str, str]:
        return {pg_id: pg["name"] for pg_id, pg in ray.util.placement_group_table().items() if pg["state"] != "REMOVED"}

    before = held()
    return lambda: sorted(name for pg_id, name in held().items() if pg_id not in before)


@pytest.fixture(scope="session")
def actor_rollout(ray_cluster, small_config, tmp_path_factory):
    cfg = prepare_files(small_config(tmp_path_factory.mktemp("sync_run")))
    actor = _actor_group(cfg, _slots("actor", "sync_train", 2))
    rollout = probed_rollout_group(cfg, _slots("rollout", "sync_gen", 1))
    rollout.setup()
    # The controller's connect_weight_sync, with small buckets to exercise the bucketed path.
    host, port = actor.address()
    spec = SyncGroupSpec(master_addr=host, master_port=port, world_size=2, backend="gloo", timeout_s=60,
                         bucket_bytes=BUCKET_BYTES)
    ray.get([*actor.init_weight_sync_async([spec, None]), *rollout.init_weight_sync_async([[(spec, 1)]])])
    manifest = actor.weight_manifest(cfg.model.dtype)

    data = build_datasets(cfg)
    prompts = prompt_batch(data.train.batch([0, 1]))
    sampling = SamplingParams(n=cfg.rollout.n, temperature=1.0, max_new_tokens=cfg.rollout.max_response_length, seed=3)
    generated = rollout.generate(prompts, sampling)
    batch = _train_batch(cfg, generated)
    initial = actor.full_weights()
    metrics = ray.get(actor.update_async(batch, temperature=1.0, kl_coef=0.0, mini_batches=1, ppo_epochs=1))
    updated = actor.full_weights()
    yield ActorRollout(cfg, actor, rollout, manifest, batch, initial, updated, metrics)
    shutdown_groups([actor, rollout])
