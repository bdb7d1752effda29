"""The two engine protocols (DESIGN §4). Workers are written once against these; backends implement them.

TrainEngine  — FSDP2 (`fsdp2.py`): actor and reference.
RolloutEngine — Hugging Face decode loop (`hf_rollout.py`) and vLLM (`vllm_rollout.py`): rollout, both
built from one `RolloutSpec` and implementing the whole protocol (generation, the receiving end of the
weight sync, sleep/wake for colocation, cache reset).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

from torch import Tensor

from r1ray.protocol import PromptBatch, RolloutBatch, SamplingParams, TrainBatch

# loss_fn(micro_batch, logprobs (b, R), entropy (b, R) or None) -> (scalar loss already weighted for
# gradient accumulation, metrics of this micro-batch)
LossFn = Callable[[TrainBatch, Tensor, "Tensor | None"], "tuple[Tensor, dict[str, float]]"]

# One fingerprint table per receiving process: row i = [S1, S2] of manifest entry i (see fingerprint.py).
FingerprintTable = list[list[int]]


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
    padding_free: str = "auto"              # micro-batch layout: "auto" packs only with a varlen kernel
    grad_clip: float = 1.0
    gradient_checkpointing: bool = False
    zero_stage: int = 3
    cpu_offload: bool = False
    seed: int = 0


@dataclass(frozen=True)
class RolloutSpec:
    """What a rollout engine needs to build itself (one spec for both engines; each reads its part)."""

    engine: str                             # "hf" | "vllm"
    model_path: str
    dtype: str                              # weights and compute dtype of the engine
    max_model_len: int                      # prompt + response budget
    seed: int
    device: str = "cpu"                     # the rollout pool's device, "cpu" | "gpu" (a TP engine's own
                                            # worker holds no GPU: its TP workers do)
    trust_remote_code: bool = False
    attn_implementation: str = "sdpa"       # hf
    generate_batch_size: int = 256          # hf: sequences sampled together (one KV cache)
    tensor_parallel_size: int = 1           # vllm: devices (worker processes) per engine
    gpu_memory_utilization: float = 0.5     # vllm on GPU: share of the device for weights + KV cache
    sleep_level: int = 0                    # vllm on GPU: 0 never sleeps, 1 offloads weights, 2 discards them
    cpu_kv_cache_gib: int = 1               # vllm on CPU: KV cache size in whole GiB


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
        """`sampling.n` samples per prompt, rows grouped by prompt; `sampling.seed` is this engine's own."""

    def init_weight_sync(self, members: list[dict]) -> None:
        """Join the weight sync: members[t] = {"spec": SyncGroupSpec.to_dict(), "rank": sync rank} for the
        engine's TP worker t (one shared group, or one colocated "ipc" pair per worker)."""

    def receive_weights(self, manifest: list) -> list[FingerprintTable]:
        """Receive and load the actor's weights; one fingerprint table per receiving process."""

    def reset_cache(self) -> None:
        """Forget cached KV (prefix cache): it was computed with the previous weights."""

    def sleep(self) -> None:
        """Free accelerator memory while the actor trains on the same devices."""

    def wake(self, tags: Sequence[str]) -> None:
        """Undo `sleep` for "weights" (before a sync) or "kv_cache" (before generation)."""

    def close(self) -> None:
        """Leave the sync group and stop the engine's processes."""
