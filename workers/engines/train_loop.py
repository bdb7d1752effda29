"""The training loop both TrainEngines share (docs/design.md §3), written once over each backend's primitives.

    train_step(batch)                                    forward_logprobs(batch)
      micro_batches: count agreed by all-reduce (MAX)      micro_batches (the same cut)
      for each micro-batch (None: a dummy pass)            for each micro-batch, no grad
        forward_micro -> loss_fn -> backward                 forward_micro -> (b, R) rows
      optimizer_step -> grad norm (non-finite: skipped)
      metrics: loss_fn's means, grad norm, lr, skipped

A backend (`fsdp2.py`, `deepspeed_engine.py`) subclasses `MicroBatchedEngine` and implements only the
primitives: `forward_model`, `train_mode`, `backward`, `optimizer_step`, `current_lr`. Data-parallel ranks
must run the same number of forward and backward passes (each one gathers or reduces shards), so the
micro-batch count is agreed across ranks and a rank with fewer rows runs dummy passes for the rest.

With `sequence_parallel_size` S > 1 (`ulysses.py`) each group of S ranks gathers its rows first and runs
every micro-batch of their union together, each rank holding 1/S of its columns; the token budget stays
per rank, so a micro-batch of the union may hold S times `micro_batch_tokens`.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod

import torch
import torch.distributed as dist
from torch import Tensor

from r1ray.protocol import TrainBatch, select_rows
from r1ray.workers.engines import ulysses
from r1ray.workers.engines.base import EngineSpec, LossFn
from r1ray.workers.engines.packing import (balanced_chunks, forward_response, pack_for_forward, pad_for_forward,
                                          padded_chunks)

logger = logging.getLogger(__name__)


class MicroBatchedEngine(ABC):
    """`forward_logprobs` and `train_step` of the TrainEngine protocol over a backend's primitives.

    Subclasses set `spec`, `device` and `packing` (padded or packed micro-batches, see `packing.py`).
    """

    spec: EngineSpec
    device: torch.device
    packing: bool
    sp: ulysses.SequenceParallel | None = None       # set by `init_sequence_parallel` when S > 1

    # --- primitives, one implementation per backend -------------------------------------------------

    @property
    @abstractmethod
    def forward_model(self) -> torch.nn.Module:
        """The callable a forward pass runs (takes Hugging Face keyword arguments, returns `.logits`)."""

    @abstractmethod
    def train_mode(self, training: bool) -> None:
        """model.train() / model.eval()."""

    @abstractmethod
    def backward(self, loss: Tensor) -> None:
        """Accumulate the gradients of `loss`, already weighted for accumulation: the backend must not
        rescale it (no division by a number of micro-batches)."""

    @abstractmethod
    def optimizer_step(self) -> float:
        """Clip the accumulated gradients to `spec.grad_clip`, step the optimizer unless their norm is
        non-finite, zero them and step the LR schedule (skipped steps too). Returns the global
        pre-clip gradient norm: non-finite exactly when the step was skipped."""

    @abstractmethod
    def current_lr(self) -> float:
        """The learning rate of the next optimizer step."""

    # --- the loop, written once -----------------------------------------------------------------------

    def init_sequence_parallel(self, model: torch.nn.Module) -> None:
        """Join this rank's sequence-parallel group and route `model`'s attention through Ulysses (S > 1).
        A collective: every rank of the world calls it while building its engine."""
        self.sp = ulysses.sequence_parallel_group(self.spec.sequence_parallel_size)
        if self.sp is not None:
            ulysses.enable(model, self.sp.size)
            logger.info("sequence parallel: %d ranks per sequence (this rank holds part %d of each)",
                        self.sp.size, self.sp.rank)

    def micro_batches(self, batch: TrainBatch,
                      token_budget: int | None = None) -> list[tuple[list[int], TrainBatch | None]]:
        """(row indices, micro-batch or None when this rank's share of the agreed count is empty).

        Packed: k micro-batches of near-equal token counts. Padded: similar-length rows whose padded size
        fits the budget; a rank that needs fewer than the agreed count runs dummy passes for the rest.
        `token_budget` (per rank) is the stage's (the memory plan's, r1ray/memory_plan.py), else the spec's.
        """
        budget = (token_budget or self.spec.micro_batch_tokens) * (self.sp.size if self.sp else 1)
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

    def forward_micro(self, micro: TrainBatch | None, temperature: float, with_entropy: bool,
                      entropy_grad: bool = False) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """(logprobs (b, R), entropy (b, R) or None, dummy loss when `micro` is None)."""
        model = self.forward_model
        kernel = self.spec.attn_implementation
        if micro is None:
            # A rank with fewer rows than the agreed micro-batch count still joins the collectives.
            if self.sp is not None:
                return None, None, ulysses.dummy_forward_sp(model, self.device, self.sp, kernel)
            out = model(input_ids=torch.zeros(1, 1, dtype=torch.int64, device=self.device), use_cache=False)
            return None, None, out.logits.sum() * 0.0
        layout = pack_for_forward if self.packing else pad_for_forward
        inputs = layout(micro.tokens, micro.cu_seqlens, micro.prompt_lens, micro.response_mask.shape[1])
        if self.sp is not None:
            logp, ent = ulysses.forward_response_sp(model, inputs, self.device, temperature, with_entropy,
                                                    entropy_grad, self.sp, kernel)
        else:
            logp, ent = forward_response(model, inputs, self.device, temperature, with_entropy, entropy_grad)
        return logp, ent, None

    @torch.no_grad()
    def forward_logprobs(self, batch: TrainBatch, temperature: float, with_entropy: bool = False,
                         token_budget: int | None = None) -> tuple[Tensor, Tensor | None]:
        self.train_mode(False)
        own_rows, own_width = slice(0, len(batch)), batch.response_mask.shape[1]
        if self.sp is not None:
            batch, own_rows = ulysses.gather_rows(batch, self.sp)
        width = batch.response_mask.shape[1]
        logp = torch.zeros(len(batch), width)
        ent = torch.zeros(len(batch), width) if with_entropy else None
        for rows, micro in self.micro_batches(batch, token_budget):
            lp, en, _ = self.forward_micro(micro, temperature, with_entropy)
            if lp is None:
                continue
            logp[rows] = lp.float().cpu()
            if ent is not None:
                ent[rows] = en.float().cpu()
        return logp[own_rows, :own_width], ent[own_rows, :own_width] if ent is not None else None

    def train_step(self, batch: TrainBatch, loss_fn: LossFn, temperature: float,
                   token_budget: int | None = None) -> dict[str, float]:
        """One optimizer step. Entropy is always computed (the actor/entropy metric), but with gradients
        only when `loss_fn.entropy_grad` says the loss uses it; a loss without that attribute gets them.
        `actor/sequence_parallel_size` and `actor/micro_batch_tokens` report the S and the per-rank token
        budget the step ran with."""
        assert self.spec.trainable, "train_step on a frozen engine"
        self.train_mode(True)
        entropy_grad = bool(getattr(loss_fn, "entropy_grad", True))
        if self.sp is not None:
            batch, _ = ulysses.gather_rows(batch, self.sp)   # the group trains on the union of its rows
        totals: dict[str, float] = {}
        micro_batches = [micro for _, micro in self.micro_batches(batch, token_budget)]
        for micro in micro_batches:
            logp, ent, dummy = self.forward_micro(micro, temperature, with_entropy=True, entropy_grad=entropy_grad)
            if logp is None:
                self.backward(dummy)
                continue
            loss, metrics = loss_fn(micro, logp, ent)
            self.backward(loss)
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value
        grad_norm = self.optimizer_step()
        real = max(1, sum(m is not None for m in micro_batches))
        out = {key: value / real for key, value in totals.items()}
        out.update({"actor/grad_norm": grad_norm, "actor/lr": self.current_lr(),
                    "actor/skipped_steps": 0.0 if math.isfinite(grad_norm) else 1.0,
                    "actor/sequence_parallel_size": float(self.sp.size if self.sp else 1),
                    "actor/micro_batch_tokens": float(token_budget or self.spec.micro_batch_tokens)})
        return out


def tied_parameters(model: torch.nn.Module) -> list[list[str]]:
    """Names of the parameters that share one tensor (lm_head and the embedding of tied models)."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return sorted(group for group in names.values() if len(group) > 1)
