"""What a first multi-rank GPU run needs of the FSDP2 engine, checked on 2 gloo ranks.

- The default process group carries CPU tensors on GPU too (gloo beside NCCL), with the collective
  timeout it is given.
- Rank 0 alone reads the checkpoint; the other ranks build the model on the meta device and receive
  rank 0's weights and non-persistent buffers (rotary `inv_freq`), bit for bit, tied weights still tied.
- The frozen reference holds its weights in the compute dtype, not float32.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import timedelta

import pytest
import ray
import torch
import torch.distributed as dist
from torch.distributed.distributed_c10d import BackendConfig
from transformers import AutoModelForCausalLM

from r1ray.controller.roles import engine_spec, loss_settings
from r1ray.protocol import split_batch
from r1ray.workers.actor import ActorWorker
from r1ray.workers.base import TorchWorker, default_group_backend, free_port
from r1ray.workers.engines.packing import forward_response, pad_for_forward
from r1ray.workers.placement import Placement, ResourcePool
from r1ray.workers.role_groups import PolicyGroup

pytestmark = pytest.mark.timeout(300)


class ProbedActorWorker(ActorWorker):
    """The real actor worker, made to fail if any rank but 0 reads the checkpoint, plus a probe of
    what each rank holds after the build."""

    def setup(self) -> None:
        if self.rank != 0:
            import transformers

            def refuse(*args, **kwargs):
                raise AssertionError(f"rank {self.rank} read the checkpoint; only rank 0 may")

            transformers.AutoModelForCausalLM.from_pretrained = refuse
            transformers.PreTrainedModel.from_pretrained = refuse
        super().setup()

    def held(self) -> dict:
        """This rank's full weights (a collective), buffers, and whether lm_head is the embedding."""
        model = self.engine.model
        return {"weights": {n: t.cpu().clone() for n, t in self.engine.named_full_weights()},
                "buffers": {n: b.cpu().clone() for n, b in model.named_buffers()},
                "tied": model.lm_head.weight is model.model.embed_tokens.weight}


# Ray workers cannot import this test module: ship the class above by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_default_group_backend_sends_cpu_tensors_over_gloo() -> None:
    assert BackendConfig(dist.Backend(default_group_backend(torch.device("cuda", 0)))).get_device_backend_map() == {
        "cpu": "gloo", "cuda": "nccl"}
    assert default_group_backend(torch.device("cpu")) == "gloo"


def test_init_distributed_takes_the_collective_timeout(monkeypatch) -> None:
    for key in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.setenv(key, "")           # restored after the test: init_distributed sets them
    worker = TorchWorker("actor", 0, 1)
    worker.init_distributed("127.0.0.1", free_port(), timeout_s=77)
    try:
        backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
        assert backend.options._timeout == timedelta(seconds=77)
        need = torch.tensor([3], dtype=torch.int64)
        dist.all_reduce(need, op=dist.ReduceOp.MAX)   # what `_micro_batches` does with a CPU tensor
        assert int(need) == 3
    finally:
        worker.shutdown()


def _probed_group(ar, pool: str, **spec_changes) -> PolicyGroup:
    placement = Placement(pools={pool: ResourcePool(devices_per_node=2, cpus_per_bundle=0.25)}, roles={"actor": pool},
                          threads_per_worker=1)
    slots = placement.create(timeout_s=60)["actor"]
    spec = replace(engine_spec(ar.cfg, total_optimizer_steps=1), **spec_changes)
    group = PolicyGroup("actor", ProbedActorWorker, slots, startup_timeout_s=120, collective_timeout_s=120,
                        distributed=True, init_kwargs=dict(engine_kind="fsdp2", spec=spec, loss=loss_settings(ar.cfg)))
    try:
        group.setup()
    except BaseException:
        ar.stop(group)
        raise
    return group


def _assert_holds_the_checkpoint(held: list[dict], plain: torch.nn.Module) -> None:
    want_weights, want_buffers = plain.state_dict(), dict(plain.named_buffers())
    assert {"model.rotary_emb.inv_freq"} <= set(want_buffers)
    for rank, got in enumerate(held):
        assert got["tied"], f"rank {rank}: lm_head is no longer the embedding"
        assert set(got["weights"]) == set(want_weights), rank
        assert set(got["buffers"]) == set(want_buffers), rank
        for name, tensor in [*want_weights.items(), *want_buffers.items()]:
            have = got["weights"].get(name, got["buffers"].get(name))
            assert have.dtype == tensor.dtype and torch.equal(have, tensor), f"rank {rank}: {name}"


def _plain_logprobs(plain: torch.nn.Module, batch, world_size: int) -> torch.Tensor:
    """What each rank computes for its share of `batch` (one micro-batch each, padded: the layout of the
    engine with sdpa), with a plain HF model."""
    rows = []
    with torch.no_grad():
        for part in split_batch(batch, world_size):
            padded = pad_for_forward(part.tokens, part.cu_seqlens, part.prompt_lens, part.response_mask.shape[1])
            rows.append(forward_response(plain, padded, torch.device("cpu"), 1.0, False)[0])
    return torch.cat(rows)


def test_rank0_alone_reads_the_checkpoint_and_every_rank_holds_it_exactly(actor_rollout) -> None:
    ar = actor_rollout
    plain = AutoModelForCausalLM.from_pretrained(ar.cfg.model.path, dtype=torch.float32).eval()
    group = _probed_group(ar, "probe_train")
    try:
        held = ray.get([w.held.remote() for w in group.workers])
        logprobs = torch.cat(ray.get(group.compute_logprobs_async(ar.batch, 1.0)))
    finally:
        ar.stop(group)
    _assert_holds_the_checkpoint(held, plain)
    mask = ar.batch.response_mask.bool()
    torch.testing.assert_close(logprobs[mask], _plain_logprobs(plain, ar.batch, 2)[mask], rtol=0, atol=0)


def test_frozen_reference_holds_the_compute_dtype(actor_rollout) -> None:
    ar = actor_rollout
    plain = AutoModelForCausalLM.from_pretrained(ar.cfg.model.path, dtype=torch.bfloat16).eval()
    group = _probed_group(ar, "probe_ref", trainable=False, dtype="bfloat16")
    try:
        held = ray.get([w.held.remote() for w in group.workers])
        logprobs = torch.cat(ray.get(group.compute_logprobs_async(ar.batch, 1.0)))
    finally:
        ar.stop(group)
    assert all(t.dtype == torch.bfloat16 for t in held[0]["weights"].values())
    _assert_holds_the_checkpoint(held, plain)
    mask = ar.batch.response_mask.bool()
    torch.testing.assert_close(logprobs[mask], _plain_logprobs(plain, ar.batch, 2)[mask], rtol=0, atol=0)
