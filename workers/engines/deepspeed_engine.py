"""DeepSpeed ZeRO TrainEngine (stage 2 or 3): gloo on CPU, NCCL on GPU, over the worker's own process group.

The loop is `train_loop.py`'s, shared with FSDP2; this file holds the DeepSpeed primitives. How DeepSpeed is
configured so that it computes what FSDP2 computes:
- Gradient accumulation belongs to the loop: the LossFn weights each micro-batch's loss already, so
  DeepSpeed runs with gradient_accumulation_steps=1 and managed_gradient_accumulation=false ("the client
  owns the boundary": every backward accumulates, every step() is one optimizer step) and
  `backward(scale_wrt_gas=False)` never divides the loss.
- Gradients are averaged over data-parallel ranks (DeepSpeed's gradient_average), as FSDP2 does; they are
  clipped to spec.grad_clip by DeepSpeed (`gradient_clipping`), which also skips a step whose gradient norm
  is NaN/inf (fp32 and ZeRO-3 always, bf16 through bf16.check_grad_overflow) and reports that norm as inf.
- AdamW is torch's (`torch_adam`: no compiled DeepSpeed optimizer, also with cpu_offload; on CPU DeepSpeed
  still compiles its shared-memory collective once per machine, cached under ~/.cache/torch_extensions) and the LR
  schedule is `lr_schedule.py`'s LambdaLR over it, stepped here on every step, skipped ones too
  (DeepSpeed's own scheduler hook would not step on a skipped one).
- bf16/fp16 keep float32 master weights inside DeepSpeed's optimizer (made from the compute-dtype module,
  as DeepSpeed casts it) and reduce gradients in float32, like FSDP2's reduce_dtype.
The frozen reference runs ZeRO-3 when asked for stage 3 (partitioned weights) and plain DeepSpeed (stage
0, a full copy per rank) otherwise: stage 2 partitions only gradients and optimizer state, which it has not.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.accelerator import get_accelerator
from deepspeed.utils import safe_get_full_fp32_param
from torch import Tensor

from r1ray.models import DTYPES
from r1ray.workers.engines.base import EngineSpec
from r1ray.workers.engines.lr_schedule import build_scheduler
from r1ray.workers.engines.packing import use_packing
from r1ray.workers.engines.train_loop import MicroBatchedEngine, tied_parameters
from r1ray.workers.weight_sync import Manifest

logger = logging.getLogger(__name__)

CHECKPOINT_TAG = "engine"        # DeepSpeed writes its files into <path>/engine/


def deepspeed_config(spec: EngineSpec, device: torch.device, hidden_size: int) -> dict[str, Any]:
    """The DeepSpeed config of an engine built from `spec` (see the module docstring for why each key)."""
    stage = spec.zero_stage if spec.trainable or spec.zero_stage == 3 else 0
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": False, "contiguous_gradients": True}
    pin = device.type == "cuda"
    if stage == 3:
        # Hugging Face's "auto" value: norms and biases stay whole on every rank, matrices are partitioned.
        zero["stage3_param_persistence_threshold"] = 10 * hidden_size
    if spec.cpu_offload and stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    if spec.cpu_offload and spec.trainable:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": 1,      # bookkeeping only: the loop cuts micro-batches by tokens
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": max(spec.grad_clip, 0.0),
        "steps_per_print": 2 ** 62,
        "wall_clock_breakdown": False,
        "zero_optimization": zero,
        "bf16": {"enabled": spec.dtype == "bfloat16"},
        "fp16": {"enabled": spec.dtype == "float16"},
    }
    if spec.dtype != "float32":
        config["communication_data_type"] = "fp32"
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    if spec.trainable:
        config["optimizer"] = {"type": "AdamW", "params": {
            "lr": spec.lr, "betas": list(spec.betas), "eps": 1e-8, "weight_decay": spec.weight_decay,
            "torch_adam": True}}
    return config


class DeepSpeedEngine(MicroBatchedEngine):
    def __init__(self, spec: EngineSpec, device: torch.device):
        self.spec = spec
        self.device = device
        self.packing = use_packing(spec.padding_free, spec.attn_implementation)
        self.engine = self._build_engine()
        self.scheduler = build_scheduler(self.engine.basic_optimizer, spec) if spec.trainable else None
        # name -> parameter (or persistent buffer) of the state dict, tied weights under each name
        self.state_tensors: dict[str, Tensor] = dict(self.engine.module.state_dict(keep_vars=True))

    def _build_engine(self) -> "deepspeed.DeepSpeedEngine":
        s = self.spec
        if s.zero_stage not in (2, 3):
            raise ValueError(f"actor.zero_stage: {s.zero_stage} is not supported by the deepspeed engine; use 2 or 3")
        if get_accelerator().device_name() != self.device.type:
            raise RuntimeError(f"DeepSpeed picked the '{get_accelerator().device_name()}' accelerator but this worker "
                               f"runs on {self.device.type}; set DS_ACCELERATOR={self.device.type}")
        from transformers import AutoConfig

        hidden = int(AutoConfig.from_pretrained(s.model_path, trust_remote_code=s.trust_remote_code).hidden_size)
        config = deepspeed_config(s, self.device, hidden)
        torch.manual_seed(s.seed)
        model = self._load_module(config)
        tied = tied_parameters(model)
        if s.gradient_checkpointing and s.trainable:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not s.trainable:
            model.requires_grad_(False)
        self.init_sequence_parallel(model)
        params = [p for p in model.parameters() if p.requires_grad] if s.trainable else None
        # The process group exists already (`Worker.init_distributed`): DeepSpeed wraps it, starts none.
        engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=config,
                                          dist_init_required=False)
        if tied_parameters(engine.module) != tied:
            raise RuntimeError(f"DeepSpeed build of {s.model_path}: tied parameters {tied} came apart")
        return engine

    def _load_module(self, config: dict[str, Any]) -> torch.nn.Module:
        """The Hugging Face model in the compute dtype (DeepSpeed casts the module to it in any case; the
        float32 master weights are made from it). Under ZeRO-3, Hugging Face's DeepSpeed integration builds
        it inside `deepspeed.zero.Init`: each rank allocates only its partition and rank 0's copy of the
        checkpoint is scattered one layer at a time (`GatheredParameters(modifier_rank=0)`)."""
        from transformers import AutoModelForCausalLM
        from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

        from r1ray.models.load_errors import model_load_errors

        zero3 = config["zero_optimization"]["stage"] == 3
        hf_config = HfDeepSpeedConfig(config) if zero3 else None
        try:
            with model_load_errors(self.spec.model_path):
                return AutoModelForCausalLM.from_pretrained(
                    self.spec.model_path, dtype=DTYPES[self.spec.dtype],
                    attn_implementation=self.spec.attn_implementation, trust_remote_code=self.spec.trust_remote_code)
        finally:
            # The flag is process-global: left set, every later from_config (the HF export) would be
            # built partitioned too.
            if hf_config is not None:
                unset_hf_deepspeed_config()

    @property
    def zero3(self) -> bool:
        return self.engine.zero_optimization_stage() == 3

    # --- train_loop primitives ------------------------------------------------------------------------

    @property
    def forward_model(self) -> torch.nn.Module:
        return self.engine

    def train_mode(self, training: bool) -> None:
        self.engine.train(training)

    def backward(self, loss: Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def optimizer_step(self) -> float:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        if not self.engine.was_step_applied():
            # DeepSpeed skipped the step: a NaN/inf gradient would poison the weights and Adam's moments.
            logger.warning("non-finite gradient norm %s: optimizer step skipped", norm)
            norm = norm if not math.isfinite(norm) else float("inf")
        self.scheduler.step()
        return norm

    def current_lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    # --- the rest of the TrainEngine protocol ---------------------------------------------------------

    def named_full_weights(self, names: Sequence[str] | None = None) -> Iterator[tuple[str, Tensor]]:
        for name in names if names is not None else list(self.state_tensors):
            yield name, self._full_tensor(self.state_tensors[name])

    def _full_tensor(self, tensor: Tensor) -> Tensor:
        """One full weight, gathered alone (a collective under ZeRO; the gathered copy is released before
        the next). The actor's are its float32 master weights, as FSDP2's are."""
        if self.spec.trainable and tensor.requires_grad:
            full = safe_get_full_fp32_param(tensor)
            if full is not None:
                return full.detach()
        if hasattr(tensor, "ds_id"):
            with deepspeed.zero.GatheredParameters([tensor]):
                return tensor.detach().clone()
        return tensor.detach()

    def parameter_manifest(self, dtype: str) -> Manifest:
        # named_parameters() lists a tied tensor once; a ZeRO-3 parameter's full shape is its ds_shape.
        return [(name, tuple(getattr(p, "ds_shape", p.shape)), dtype)
                for name, p in self.engine.module.named_parameters()]

    def save(self, path: Path) -> None:
        """DeepSpeed's own checkpoint (module, every rank's optimizer partition with the float32 master
        weights, step counters) under `path/engine`, plus the LR schedule."""
        self.engine.save_checkpoint(str(path), tag=CHECKPOINT_TAG, save_latest=False)
        if self.scheduler is not None and (not dist.is_initialized() or dist.get_rank() == 0):
            torch.save(self.scheduler.state_dict(), path / "scheduler.pt")

    def load(self, path: Path) -> None:
        loaded, _ = self.engine.load_checkpoint(str(path), tag=CHECKPOINT_TAG, load_module_strict=True,
                                                load_optimizer_states=self.spec.trainable,
                                                load_lr_scheduler_states=False)
        if loaded is None:
            raise FileNotFoundError(f"{path}: no DeepSpeed checkpoint '{CHECKPOINT_TAG}' to load")
        if self.scheduler is not None:
            self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
            # The next step's lr, whatever the optimizer's restored param groups say.
            for group, lr in zip(self.engine.basic_optimizer.param_groups, self.scheduler.get_last_lr()):
                group["lr"] = lr

    def offload(self) -> None:
        """Weights, gradients and optimizer state to host memory (a no-op on CPU). DeepSpeed's
        `offload_states` moves what is on the device (with cpu_offload it leaves the master weights and
        Adam moments, already on the host, alone); ZeRO-3 with cpu_offload has nothing left to move, and
        a frozen ZeRO-3 reference has no optimizer to move it with, so it stays where it is."""
        if self._offloads_states():
            self.engine.offload_states(pin_memory=True)
        elif self._moves_whole_module():
            self.engine.module.to("cpu")
            torch.cuda.empty_cache()

    def onload(self) -> None:
        if self._offloads_states():
            self.engine.reload_states()
        elif self._moves_whole_module():
            self.engine.module.to(self.device)

    def _offloads_states(self) -> bool:
        # DeepSpeed refuses offload_states for parameters it offloads itself (ZeRO-3 with offload_param).
        return (self.device.type != "cpu" and self.spec.trainable
                and not (self.zero3 and self.spec.cpu_offload))

    def _moves_whole_module(self) -> bool:
        return self.device.type != "cpu" and not self.spec.trainable and not self.zero3
