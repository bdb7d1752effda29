"""A tensor-parallel vLLM engine on CPU (TP=2, two worker processes): both TP workers join the weight-sync
group at consecutive ranks after the actor's sender, both fingerprint the full tensors they received, and
the sharded engine then generates exactly what a Hugging Face model with the actor's weights generates."""

from __future__ import annotations

import pytest
import ray

pytest.importorskip("vllm", reason="vLLM is not installed: pip install -e '.[cpu]' (CI installs it)")

from r1ray.controller.roles import engine_spec, loss_settings, rollout_spec, shutdown_groups  # noqa: E402
from r1ray.models import build_tiny_model  # noqa: E402
from r1ray.protocol import SamplingParams  # noqa: E402
from r1ray.workers.engines.vllm_rollout import cpu_binding  # noqa: E402
from r1ray.workers.fingerprint import verify_fingerprints  # noqa: E402
from r1ray.workers.placement import Placement, ResourcePool  # noqa: E402
from r1ray.workers.role_groups import ActorGroup, RolloutGroup, engine_slots, sync_world_size  # noqa: E402
from r1ray.workers.weight_sync import SyncGroupSpec  # noqa: E402

from test_vllm_rollout import VLLM_TINY, _hf_greedy, _perturbed_copy, _prompts, _responses  # noqa: E402

pytestmark = pytest.mark.timeout(600)


def test_cpu_binding_splits_this_process_cores_per_tp_worker(monkeypatch):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    assert cpu_binding(2) == "0,1|2,3"
    assert cpu_binding(1) == "0,1,2,3,4"
    with pytest.raises(ValueError, match="tensor_parallel_size=8: this worker may use only 5 CPU core"):
        cpu_binding(8)


def test_tp2_engine_receives_the_sync_on_both_workers_and_matches_hf(ray_cluster, small_config, tmp_path):
    engines_model = build_tiny_model(tmp_path / "engines", seed=0, **VLLM_TINY)
    actor_model = _perturbed_copy(engines_model, tmp_path / "actor")
    cfg = small_config(tmp_path / "out", f"model.path={engines_model}", "rollout.engine=vllm",
                       "rollout.tensor_parallel_size=2", "placement.pools.gen.devices_per_node=2", "rollout.max_prompt_length=32", "rollout.max_response_length=16")

    def slots(role, pool, size):
        placement = Placement(pools={pool: ResourcePool(devices_per_node=size, cpus_per_bundle=0.25)}, roles={role: pool},
                              threads_per_worker=1)
        return placement.create(timeout_s=60)[role]

    from dataclasses import replace

    actor = ActorGroup(slots("actor", "tp_train", 1), engine_kind="fsdp2",
                       spec=replace(engine_spec(cfg, 1), model_path=str(actor_model)), loss=loss_settings(cfg),
                       startup_timeout_s=300, collective_timeout_s=120)
    engines = engine_slots(slots("rollout", "tp_gen", 2), 2, on_gpu=False)
    rollout = RolloutGroup(engines, rollout_spec(cfg), startup_timeout_s=300, collective_timeout_s=120)
    try:
        ray.get(actor.setup_async() + rollout.setup_async())
        host, port = actor.address()
        spec = SyncGroupSpec(master_addr=host, master_port=port, world_size=sync_world_size(engines, 2),
                             backend="gloo", timeout_s=120)
        assert spec.world_size == 3                       # the sender + the engine's two TP workers
        ray.get([*actor.init_weight_sync_async([spec]), *rollout.init_weight_sync_async([[(spec, 1), (spec, 2)]])])
        manifest = actor.weight_manifest(cfg.model.dtype)
        sent = actor.send_weights_async(manifest)
        tables = ray.get(rollout.receive_weights_async(manifest))[0]
        assert len(tables) == 2                           # one table per TP worker
        verify_fingerprints([n for n, _, _ in manifest], ray.get(sent)[0], tables, ["tp worker 0", "tp worker 1"])
        prompts = _prompts([[5, 6, 7], [8, 9, 10, 11]])
        got = _responses(rollout.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=8)))
        assert got == _hf_greedy(cfg, actor.full_weights(), prompts, 8)
    finally:
        shutdown_groups([actor, rollout])
