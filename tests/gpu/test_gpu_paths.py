"""CUDA paths, run on a lent GPU machine (skipped without CUDA): one file, under 10 minutes on one GPU.

`python -m pytest -q tests/gpu` there. What each test needs is in its skip condition:
- one GPU: FSDP2 over a `cpu:gloo,cuda:nccl` default group with the colocated actor/reference/HF rollout
  (the sync goes through CUDA IPC: NCCL refuses two ranks on one GPU), sdpa and flash-attention;
  vLLM (CUDA build) generation with sleep mode level 2 and the weight sync into a woken engine;
- two GPUs: the NCCL weight sync between an actor GPU and an engine GPU, a vLLM engine with TP=2, and
  sequence parallelism (Ulysses all-to-alls over NCCL, sdpa and flash-attention).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.timeout(600)]

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
HAS_VLLM = importlib.util.find_spec("vllm") is not None
# vLLM's attention kernels take head sizes 32, 64, ...: the tiny model for vLLM has hidden 64 over 2 heads.
VLLM_TINY = dict(hidden=64, layers=2, heads=2, kv_heads=1, max_position_embeddings=256)


def _pools(colocated: bool) -> list[str]:
    one = ["nodes=1", "devices_per_node=1", "device=gpu", "cpus_per_bundle=1"]
    pools = [f"placement.pools.g0.{kv}" for kv in one]
    if not colocated:
        pools += [f"placement.pools.g1.{kv}" for kv in one]
    rollout = "g0" if colocated else "g1"
    return pools + ["placement.actor=g0", "placement.ref=g0", f"placement.rollout={rollout}", "placement.reward=default"]


@pytest.fixture(scope="module")
def gpu_cluster():
    import ray

    ray.init(address="local", num_cpus=8, num_gpus=GPUS, include_dashboard=False,
             runtime_env={"env_vars": {"R1RAY_LOOPBACK": "1"}})
    yield
    ray.shutdown()


def _run_steps(cfg, steps: int = 2) -> list[dict]:
    from r1ray.controller.trainer import Trainer

    trainer = Trainer(cfg)
    trainer._build()
    try:
        metrics = [trainer.step(s) for s in range(1, steps + 1)]
        trainer.sync_weights()          # raises naming the tensors if any engine holds other weights
        actor_gpus, engine_gpus = trainer.roles.actor.device_uuids(), trainer.roles.rollout.device_uuids()
        assert all(actor_gpus) and all(all(engine) for engine in engine_gpus)     # real UUIDs on CUDA
        if trainer.colocated:           # each "ipc" receiver shares a GPU with an actor rank (ipc_pairs)
            assert {u for engine in engine_gpus for u in engine} <= set(actor_gpus)
        return metrics
    finally:
        trainer.roles.shutdown()


@pytest.mark.parametrize("attn", ["sdpa", "flash_attention_2"])
def test_colocated_grpo_steps_on_one_gpu(gpu_cluster, small_config, tmp_path, attn):
    """Actor (FSDP2, NCCL + gloo default group), reference and HF rollout on one GPU; every sync goes
    through CUDA IPC and is fingerprint-verified by the trainer."""
    if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash-attn is not installed")
    cfg = small_config(tmp_path, *_pools(colocated=True), "model.dtype=bfloat16", f"model.attn_implementation={attn}",
                       "algorithm.kl_placement=loss", "trainer.total_steps=2")
    metrics = _run_steps(cfg)
    assert all(m["actor/grad_norm"] > 0 for m in metrics)
    assert metrics[-1]["rollout/logprob_gap"] < 1.0


@pytest.mark.skipif(GPUS < 2, reason="the NCCL weight sync needs the actor and the engine on different GPUs")
def test_nccl_weight_sync_between_two_gpus(gpu_cluster, small_config, tmp_path):
    cfg = small_config(tmp_path, *_pools(colocated=False), "model.dtype=bfloat16", "trainer.total_steps=2")
    metrics = _run_steps(cfg)
    assert all(m["actor/grad_norm"] > 0 for m in metrics)


@pytest.mark.skipif(not HAS_VLLM, reason="vLLM (CUDA build) is not installed")
def test_vllm_engine_sleeps_level_2_and_generates_after_wake(tmp_path):
    from r1ray.models import build_tiny_model
    from r1ray.protocol import PromptBatch, SamplingParams
    from r1ray.workers.engines import RolloutSpec
    from r1ray.workers.engines.vllm_rollout import VLLMRolloutEngine

    model = build_tiny_model(tmp_path / "m", **VLLM_TINY)
    engine = VLLMRolloutEngine(RolloutSpec(engine="vllm", model_path=str(model), dtype="bfloat16", max_model_len=256,
                                           seed=0, device="gpu", gpu_memory_utilization=0.3, sleep_level=2),
                               torch.device("cuda"))
    prompts = PromptBatch(prompt_ids=[[5, 6, 7], [8, 9]], ground_truths=["1", "2"], data_sources=["a", "a"],
                          extra_infos=[{}, {}], indices=[0, 1])
    batch = engine.generate(prompts, SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=1))
    assert len(batch) == 6 and batch.group_size == 3 and torch.isfinite(batch.rollout_logprobs).all()
    free_awake = torch.cuda.mem_get_info()[0]
    engine.sleep()
    assert torch.cuda.mem_get_info()[0] > free_awake          # weights and KV cache released
    engine.wake(["weights"])
    engine.wake(["kv_cache"])
    # Level 2 discarded the weights: the trainer resends them (sync) before generating; here the engine
    # only has to come back and generate.
    assert len(engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=8))) == 2


@pytest.mark.skipif(not HAS_VLLM or GPUS < 2, reason="needs vLLM (CUDA) and two GPUs")
def test_vllm_tp2_engine_receives_the_nccl_sync(gpu_cluster, small_config, tmp_path):
    from r1ray.models import build_tiny_model

    model = build_tiny_model(tmp_path / "m", **VLLM_TINY)
    pools = ["placement.pools.g0.device=gpu", "placement.pools.g0.devices_per_node=1",
             "placement.pools.g1.device=gpu", "placement.pools.g1.devices_per_node=2",
             "placement.actor=g0", "placement.ref=g0", "placement.rollout=g1", "placement.reward=default"]
    if GPUS < 3:
        pytest.skip("TP=2 engine plus an actor GPU needs three GPUs")
    cfg = small_config(tmp_path, f"model.path={model}", *pools, "rollout.engine=vllm", "rollout.tensor_parallel_size=2",
                       "model.dtype=bfloat16", "trainer.total_steps=2")
    metrics = _run_steps(cfg)
    assert metrics[-1]["rollout/logprob_gap"] < 0.1


@pytest.mark.skipif(GPUS < 2, reason="sequence parallelism needs two ranks, one GPU each")
@pytest.mark.parametrize("attn", ["sdpa", "flash_attention_2"])
def test_sequence_parallel_over_two_gpus(gpu_cluster, small_config, tmp_path, attn):
    """Ulysses over NCCL: the all-to-alls of a 2-rank FSDP2 actor and reference (one GPU each) around
    sdpa (padded rows) and flash-attention (packed rows, varlen), colocated with two HF rollout engines
    (the CUDA IPC sync)."""
    if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash-attn is not installed")
    two = ["nodes=1", "devices_per_node=2", "device=gpu", "cpus_per_bundle=1"]
    cfg = small_config(tmp_path, *[f"placement.pools.g.{kv}" for kv in two], "placement.actor=g", "placement.ref=g",
                       "placement.rollout=g", "placement.reward=default", "model.dtype=bfloat16",
                       f"model.attn_implementation={attn}", "algorithm.kl_placement=loss",
                       "actor.sequence_parallel_size=2", "trainer.total_steps=2")
    metrics = _run_steps(cfg)
    assert all(m["actor/grad_norm"] > 0 and m["actor/sequence_parallel_size"] == 2.0 for m in metrics)
    assert metrics[-1]["rollout/logprob_gap"] < 1.0
