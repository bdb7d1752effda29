"""The two engine protocols (DESIGN §4). Workers are written once against these; backends implement them.

TrainEngine  — FSDP2 (`fsdp2.py`) and DeepSpeed (`deepspeed_engine.py`): actor and reference.
RolloutEngine — Hugging Face generate (`hf_rollout.py`) and vLLM (`vllm_rollout.py`): rollout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

from torch import Tensor

from r1ray.protocol import PromptBatch, RolloutBatch, SamplingParams, TrainBatch

# loss_fn(micro_batch, logprobs (b, R), entropy (b, R) or None) -> (scalar loss already weighted for
# gradient accumulation, metrics of this micro-batch)
LossFn = Callable[[TrainBatch, Tensor, "Tensor | None"], "tuple[Tensor, dict[str, float]]"]


@dataclass(frozen=True)
class EngineSpec:
    """What an engine needs to build itself; assembled from the config by the worker."""

    model_path: str
    dtype: str = "float32"                  # compute dtype
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    trainable: bool = True                  # False: reference (no optimizer, no grads)
    lr: float = 1e-6
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    min_lr_ratio: float = 0.0
    total_optimizer_steps: int = 1
    micro_batch_tokens: int = 8192
    grad_clip: float = 1.0
    gradient_checkpointing: bool = False
    zero_stage: int = 3
    cpu_offload: bool = False
    seed: int = 0


class TrainEngine(Protocol):
    def forward_logprobs(self, batch: TrainBatch, temperature: float,
                         with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        """Per-token logprobs (B, R) of the response tokens, no grad; entropy (B, R) if asked."""

    def train_step(self, batch: TrainBatch, loss_fn: LossFn, temperature: float) -> dict[str, float]:
        """One optimizer step over `batch`, micro-batched by the token budget; returns metrics."""

    def named_full_weights(self) -> Iterator[tuple[str, Tensor]]:
        """Full (unsharded) weights by Hugging Face name. A collective: every rank must iterate."""

    def save(self, path: Path) -> None:
        """Sharded save of weights and optimizer state (a collective)."""

    def load(self, path: Path) -> None:
        """Inverse of `save`."""

    def offload(self) -> None:
        """Move weights and optimizer state off the accelerator (colocated roles)."""

    def onload(self) -> None:
        """Inverse of `offload`."""


class RolloutEngine(Protocol):
    def generate(self, prompts: PromptBatch, sampling: SamplingParams) -> RolloutBatch:
        """`sampling.n` samples per prompt, rows grouped by prompt."""

    def load_weights(self, weights: Iterator[tuple[str, Tensor]]) -> None:
        """Replace the engine's weights by name."""

    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        """The engine's current weights by name (for verification)."""

    def weight_manifest(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(name, shape, dtype) of every weight the engine expects, in a fixed order."""

    def sleep(self) -> None:
        """Free accelerator memory while the actor trains on the same devices."""

    def wake(self) -> None:
        """Inverse of `sleep`."""
