"""GPU paths, run on a lent GPU machine (skipped without CUDA): FSDP2 over NCCL, NCCL weight sync (bit-exact),
HF rollout on CUDA, the sdpa and flash-attention kernels, and vLLM generation with sleep/wake when installed."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.timeout(900)]

GPU_POOL = ["placement.pools.gpu.nodes=1", "placement.pools.gpu.devices_per_node=1",
            "placement.pools.gpu.device=gpu", "placement.pools.gpu.cpus_per_bundle=1",
            "placement.actor=gpu", "placement.ref=gpu", "placement.rollout=gpu", "placement.reward=default"]


@pytest.fixture(scope="module")
def gpu_cluster():
    import ray

    ray.init(address="local", num_cpus=8, num_gpus=torch.cuda.device_count(), include_dashboard=False,
             runtime_env={"env_vars": {"R1RAY_LOOPBACK": "1"}})
    yield
    ray.shutdown()


@pytest.mark.parametrize("attn", ["sdpa", "flash_attention_2"])
def test_grpo_steps_on_gpu_with_nccl_sync(gpu_cluster, small_config, tmp_path, attn):
    """Actor (FSDP2/NCCL), reference and HF rollout colocated on one GPU; every step's NCCL weight sync is
    checksum-verified by the trainer, and afterwards the rollout holds the actor's weights bit for bit."""
    if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        pytest.skip("flash-attn is not installed")
    from r1ray.controller.trainer import Trainer

    cfg = small_config(tmp_path, *GPU_POOL, "model.dtype=bfloat16", f"model.attn_implementation={attn}",
                       "algorithm.kl_placement=loss", "trainer.total_steps=2")
    trainer = Trainer(cfg)
    trainer._build()
    try:
        metrics = [trainer.step(s) for s in (1, 2)]
        assert all(m["actor/grad_norm"] > 0 for m in metrics)
        assert metrics[-1]["rollout/logprob_gap"] < 1.0
        import ray

        actor = dict(ray.get(trainer.roles.actor.call_rank0_async("full_weights")))
        rollout = ray.get(trainer.roles.rollout.workers[0].weights.remote())
        for name, tensor in rollout.items():
            assert torch.equal(tensor, actor[name].to(tensor.dtype)), name
    finally:
        trainer.roles.shutdown()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_vllm_engine_generates_and_sleeps(tiny_model):
    from r1ray.protocol import PromptBatch, SamplingParams
    from r1ray.workers.engines.vllm_rollout import VLLMRolloutEngine

    engine = VLLMRolloutEngine(str(tiny_model), dtype="bfloat16", tensor_parallel_size=1, gpu_memory_utilization=0.3,
                               max_model_len=256, seed=0, enable_sleep_mode=True)
    prompts = PromptBatch(prompt_ids=[[5, 6, 7], [8, 9]], ground_truths=["1", "2"], data_sources=["a", "a"],
                          extra_infos=[{}, {}], indices=[0, 1])
    batch = engine.generate(prompts, SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=1))
    assert len(batch) == 6 and batch.group_size == 3
    assert (batch.response_lens > 0).all() and (batch.response_lens <= 8).all()
    assert torch.isfinite(batch.rollout_logprobs).all()
    engine.sleep()
    engine.wake()
    again = engine.generate(prompts, SamplingParams(n=1, temperature=0.0, max_new_tokens=8, seed=1))
    assert len(again) == 2
