"""FSDP2 TrainEngine (`torch.distributed.fsdp.fully_shard`): gloo on CPU, NCCL on GPU.

Every decoder layer is its own FSDP unit and the root holds embeddings, final norm and head. The loop
(micro-batches in a count agreed across ranks, dummy passes, metrics) is `train_loop.py`'s; this file
holds the FSDP2 primitives. Only rank 0 reads the checkpoint; the other ranks build on the meta device and
receive their shards by broadcast.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import Tensor
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_state_dict, set_model_state_dict,
                                                     set_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from r1ray.models import DTYPES
from r1ray.workers.engines.base import EngineSpec
from r1ray.workers.engines.lr_schedule import build_scheduler
from r1ray.workers.engines.packing import use_packing
from r1ray.workers.engines.train_loop import MicroBatchedEngine, tied_parameters
from r1ray.workers.weight_sync import Manifest

logger = logging.getLogger(__name__)


class FSDP2Engine(MicroBatchedEngine):
    def __init__(self, spec: EngineSpec, device: torch.device):
        self.spec = spec
        self.device = device
        self.model = self._build_model()
        self.init_sequence_parallel(self.model)
        self.packing = use_packing(spec.padding_free, spec.attn_implementation)
        self.optimizer = self._build_optimizer() if spec.trainable else None
        self.scheduler = self._build_scheduler() if self.optimizer else None

    def _build_model(self) -> torch.nn.Module:
        """The sharded model, its checkpoint read from disk by rank 0 alone.

        Every rank loading a 7B checkpoint in float32 would need 30 GB of host memory each; instead the
        other ranks build the model on the meta device (no memory), shard it, and receive rank 0's
        weights one tensor at a time, each rank keeping only its shard.
        """
        torch.manual_seed(self.spec.seed)
        leader = not dist.is_initialized() or dist.get_rank() == 0
        model = self._load_checkpoint() if leader else self._meta_model()
        full_state = model.state_dict() if leader else {}
        tied = tied_parameters(model)
        if self.spec.gradient_checkpointing and self.spec.trainable:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not self.spec.trainable:
            model.requires_grad_(False)
        compute = DTYPES[self.spec.dtype]
        policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
        layer_types = set(getattr(model, "_no_split_modules", None) or [])
        for module in model.modules():
            if type(module).__name__ in layer_types:
                fully_shard(module, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        if leader:
            model.to(self.device)
        else:
            model.to_empty(device=self.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            _broadcast_from_rank0(model, full_state)
        if tied_parameters(model) != tied:
            raise RuntimeError(f"FSDP2 build of {self.spec.model_path}: tied parameters {tied} came apart")
        return model

    def _weights_dtype(self) -> torch.dtype:
        # The actor keeps float32 master weights (FSDP casts to the compute dtype for forward/backward);
        # the frozen reference never steps, so it holds the compute dtype and half the memory.
        return torch.float32 if self.spec.trainable else DTYPES[self.spec.dtype]

    def _load_checkpoint(self) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        from r1ray.models.load_errors import model_load_errors

        with model_load_errors(self.spec.model_path):
            return AutoModelForCausalLM.from_pretrained(
                self.spec.model_path, dtype=self._weights_dtype(), attn_implementation=self.spec.attn_implementation,
                trust_remote_code=self.spec.trust_remote_code)

    def _meta_model(self) -> torch.nn.Module:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(self.spec.model_path, trust_remote_code=self.spec.trust_remote_code)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(
                config, dtype=self._weights_dtype(), attn_implementation=self.spec.attn_implementation,
                trust_remote_code=self.spec.trust_remote_code)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        s = self.spec
        return torch.optim.AdamW(self.model.parameters(), lr=s.lr, betas=tuple(s.betas), weight_decay=s.weight_decay)

    def _build_scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        return build_scheduler(self.optimizer, self.spec)

    # --- train_loop primitives ------------------------------------------------------------------------

    @property
    def forward_model(self) -> torch.nn.Module:
        return self.model

    def train_mode(self, training: bool) -> None:
        self.model.train(training)

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def optimizer_step(self) -> float:
        max_norm = self.spec.grad_clip if self.spec.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        norm = norm.full_tensor() if isinstance(norm, DTensor) else norm
        if torch.isfinite(norm):
            self.optimizer.step()
        else:
            # A NaN/inf loss or gradient would poison the weights and Adam's moments for good.
            logger.warning("non-finite gradient norm %s: optimizer step skipped", float(norm))
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return float(norm)

    def current_lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    # --- the rest of the TrainEngine protocol ---------------------------------------------------------

    def named_full_weights(self, names: Sequence[str] | None = None) -> Iterator[tuple[str, Tensor]]:
        state = self.model.state_dict()
        for name in names if names is not None else list(state):
            tensor = state[name]
            yield name, (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach()

    def parameter_manifest(self, dtype: str) -> Manifest:
        # named_parameters() lists a tied tensor once; DTensor shapes are the full shapes.
        return [(name, tuple(p.shape), dtype) for name, p in self.model.named_parameters()]

    def save(self, path: Path) -> None:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer or [])
        state = {"model": model_sd, "optim": optim_sd}
        dcp.save(state, checkpoint_id=str(path / "engine"))
        if self.scheduler is not None and (not dist.is_initialized() or dist.get_rank() == 0):
            torch.save(self.scheduler.state_dict(), path / "scheduler.pt")

    def load(self, path: Path) -> None:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer or [])
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(path / "engine"))
        set_state_dict(self.model, self.optimizer or [], model_state_dict=state["model"],
                       optim_state_dict=state["optim"], options=StateDictOptions(strict=True))
        if self.scheduler is not None:
            self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))

    def offload(self) -> None:
        self._move(torch.device("cpu"))

    def onload(self) -> None:
        self._move(self.device)

    def _move(self, device: torch.device) -> None:
        if self.device.type == "cpu":
            return
        self.model.to(device)
        if self.optimizer is not None:
            for state in self.optimizer.state.values():
                for key, value in state.items():
                    if isinstance(value, Tensor):
                        state[key] = value.to(device, non_blocking=True)
        if device.type == "cpu":
            torch.cuda.empty_cache()


def _broadcast_from_rank0(model: torch.nn.Module, full_state: dict[str, Tensor]) -> None:
    """Rank 0's full weights (`full_state`, empty elsewhere) into every rank's shards, and rank 0's
    non-persistent buffers (rotary `inv_freq`: in no state dict) into every rank's buffers.

    The tensors travel on the model's device: over NCCL on GPU, gloo on CPU. Rank 0's full copy stays
    on its host and is moved one tensor at a time.
    """
    _check_same_layout(model)
    set_model_state_dict(model, full_state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for module in model.modules():
        for name in sorted(module._non_persistent_buffers_set):
            buffer = module._buffers.get(name)
            if buffer is not None:
                dist.broadcast(buffer, src=0)


def _check_same_layout(model: torch.nn.Module) -> None:
    """Refuse to go on when the meta-built model differs from rank 0's loaded one (a loader that keeps some
    modules in float32, say): the broadcast would cast silently and FSDP's all-gathers would mix dtypes."""
    layout = [(name, str(p.dtype), tuple(p.shape)) for name, p in model.named_parameters()]
    layouts: list = [None] * dist.get_world_size()
    dist.all_gather_object(layouts, layout)
    differing = sorted({entry[0] for other in layouts for entry in set(other) ^ set(layouts[0])})
    if differing:
        raise RuntimeError(f"FSDP2 build: the ranks' models differ from rank 0's loaded checkpoint in the name, "
                           f"dtype or shape of {len(differing)} parameter(s), first {differing[:3]}")
