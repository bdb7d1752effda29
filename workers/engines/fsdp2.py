"""FSDP2 TrainEngine (`torch.distributed.fsdp.fully_shard`): gloo on CPU, NCCL on GPU.

Every decoder layer is its own FSDP unit and the root holds embeddings, final norm and head. Data-parallel
ranks must run the same number of forward passes (each one all-gathers shards), so micro-batches are
cut into a count agreed by an all-reduce (`balanced_chunks`), never a rank-local count. Only rank 0 reads
the checkpoint; the other ranks build on the meta device and receive their shards by broadcast.
"""

from __future__ import annotations

import logging
import math
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

from r1ray.protocol import TrainBatch, select_rows
from r1ray.workers.engines.base import EngineSpec, LossFn
from r1ray.workers.engines.packing import (balanced_chunks, forward_response, pack_for_forward, pad_for_forward,
                                          padded_chunks, use_packing)

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class FSDP2Engine:
    def __init__(self, spec: EngineSpec, device: torch.device):
        self.spec = spec
        self.device = device
        self.model = self._build_model()
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
        tied = _tied_parameters(model)
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
        if _tied_parameters(model) != tied:
            raise RuntimeError(f"FSDP2 build of {self.spec.model_path}: tied parameters {tied} came apart")
        return model

    def _weights_dtype(self) -> torch.dtype:
        # The actor keeps float32 master weights (FSDP casts to the compute dtype for forward/backward);
        # the frozen reference never steps, so it holds the compute dtype and half the memory.
        return torch.float32 if self.spec.trainable else DTYPES[self.spec.dtype]

    def _load_checkpoint(self) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

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
        s = self.spec

        def factor(step: int) -> float:
            if step < s.warmup_steps:
                return (step + 1) / s.warmup_steps
            if s.lr_schedule == "constant":
                return 1.0
            span = max(1, s.total_optimizer_steps - s.warmup_steps)
            progress = min(1.0, (step - s.warmup_steps) / span)
            return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def _micro_batches(self, batch: TrainBatch) -> list[tuple[list[int], TrainBatch | None]]:
        """(row indices, micro-batch or None when this rank's share of the agreed count is empty).

        Packed: k micro-batches of near-equal token counts. Padded: similar-length rows whose padded size
        fits the budget; a rank that needs fewer than the agreed count runs dummy passes for the rest.
        """
        budget = self.spec.micro_batch_tokens
        lengths = batch.seq_lens.tolist()
        if self.packing:
            chunks: list[list[int]] = []
            local = max(1, math.ceil(sum(lengths) / budget))
        else:
            prompts = batch.prompt_lens.tolist()
            chunks = padded_chunks(prompts, [n - p for n, p in zip(lengths, prompts)], budget)
            local = max(1, len(chunks))
        need = torch.tensor([local], dtype=torch.int64)
        if dist.is_initialized():
            dist.all_reduce(need, op=dist.ReduceOp.MAX)
        if self.packing:
            chunks = balanced_chunks(lengths, int(need))
        chunks += [[] for _ in range(int(need) - len(chunks))]
        return [(rows, select_rows(batch, rows) if rows else None) for rows in chunks]

    def _forward(self, micro: TrainBatch | None, temperature: float, with_entropy: bool,
                 entropy_grad: bool = False) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """(logprobs (b, R), entropy (b, R) or None, dummy loss when `micro` is None)."""
        if micro is None:
            # A rank with fewer rows than the agreed micro-batch count still joins the collectives.
            out = self.model(input_ids=torch.zeros(1, 1, dtype=torch.int64, device=self.device), use_cache=False)
            return None, None, out.logits.sum() * 0.0
        layout = pack_for_forward if self.packing else pad_for_forward
        inputs = layout(micro.tokens, micro.cu_seqlens, micro.prompt_lens, micro.response_mask.shape[1])
        logp, ent = forward_response(self.model, inputs, self.device, temperature, with_entropy, entropy_grad)
        return logp, ent, None

    @torch.no_grad()
    def forward_logprobs(self, batch: TrainBatch, temperature: float,
                         with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        self.model.eval()
        width = batch.response_mask.shape[1]
        logp = torch.zeros(len(batch), width)
        ent = torch.zeros(len(batch), width) if with_entropy else None
        for rows, micro in self._micro_batches(batch):
            lp, en, _ = self._forward(micro, temperature, with_entropy)
            if lp is None:
                continue
            logp[rows] = lp.float().cpu()
            if ent is not None:
                ent[rows] = en.float().cpu()
        return logp, ent

    def train_step(self, batch: TrainBatch, loss_fn: LossFn, temperature: float) -> dict[str, float]:
        """One optimizer step. Entropy is always computed (the actor/entropy metric), but with gradients
        only when `loss_fn.entropy_grad` says the loss uses it; a loss without that attribute gets them."""
        assert self.optimizer is not None, "train_step on a frozen engine"
        self.model.train()
        entropy_grad = bool(getattr(loss_fn, "entropy_grad", True))
        totals: dict[str, float] = {}
        micro_batches = [micro for _, micro in self._micro_batches(batch)]
        for micro in micro_batches:
            logp, ent, dummy = self._forward(micro, temperature, with_entropy=True, entropy_grad=entropy_grad)
            if logp is None:
                dummy.backward()
                continue
            loss, metrics = loss_fn(micro, logp, ent)
            loss.backward()
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value
        grad_norm = self._clip_and_step()
        real = max(1, sum(m is not None for m in micro_batches))
        out = {key: value / real for key, value in totals.items()}
        out.update({"actor/grad_norm": grad_norm, "actor/lr": self.scheduler.get_last_lr()[0],
                    "actor/skipped_steps": 0.0 if math.isfinite(grad_norm) else 1.0})
        return out

    def _clip_and_step(self) -> float:
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

    def named_full_weights(self, names: Sequence[str] | None = None) -> Iterator[tuple[str, Tensor]]:
        state = self.model.state_dict()
        for name in names if names is not None else list(state):
            tensor = state[name]
            yield name, (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach()

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


def _tied_parameters(model: torch.nn.Module) -> list[list[str]]:
    """Names of the parameters that share one tensor (lm_head and the embedding of tied models)."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return sorted(group for group in names.values() if len(group) > 1)
