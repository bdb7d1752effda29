"""The two engine protocols (docs/design.md §3). Workers are written once against these; backends implement them.

TrainEngine  — FSDP2 (`fsdp2.py`) and DeepSpeed ZeRO 2/3 (`deepspeed_engine.py`): actor and reference. Both
build `forward_logprobs` and `train_step` from the same loop (`train_loop.py`) over a few primitives
(forward of one micro-batch, backward, optimizer step, current lr) and implement the rest themselves.
RolloutEngine — Hugging Face decode loop (`hf_rollout.py`) and vLLM (`vllm_rollout.py`): rollout, both
built from one `RolloutSpec` and implementing the whole protocol (generation, the receiving end of the
weight sync, sleep/wake for colocation, cache reset).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

from torch import Tensor

from r1ray.config import ActorConfig, ModelConfig, RolloutConfig
from r1ray.protocol import PromptBatch, RolloutBatch, SamplingParams, TrainBatch
from r1ray.workers.weight_sync import Manifest

# loss_fn(micro_batch, logprobs (b, R), entropy (b, R) or None) -> (scalar loss already weighted for
# gradient accumulation, metrics of this micro-batch)
LossFn = Callable[[TrainBatch, Tensor, "Tensor | None"], "tuple[Tensor, dict[str, float]]"]

_ACTOR, _MODEL, _ROLLOUT = ActorConfig(), ModelConfig(), RolloutConfig()

# One fingerprint table per receiving process: row i = [S1, S2, S3] of manifest entry i (see fingerprint.py).
FingerprintTable = list[list[int]]


@dataclass(frozen=True)
class EngineSpec:
    """What an engine needs to build itself; assembled from the config by `controller.roles.engine_spec`.
    Defaults are the schema's (`ActorConfig`, `ModelConfig`), so a spec built in a test trains like a run."""

    model_path: str
    dtype: str = _MODEL.dtype               # compute dtype
    attn_implementation: str = _MODEL.attn_implementation
    trust_remote_code: bool = _MODEL.trust_remote_code
    trainable: bool = True                  # False: reference (no optimizer, no grads)
    lr: float = _ACTOR.lr
    weight_decay: float = _ACTOR.weight_decay
    betas: tuple[float, float] = tuple(_ACTOR.betas)
    warmup_steps: int = _ACTOR.warmup_steps
    lr_schedule: str = _ACTOR.lr_schedule
    min_lr_ratio: float = _ACTOR.min_lr_ratio
    total_optimizer_steps: int = 1
    micro_batch_tokens: int = _ACTOR.micro_batch_tokens
    padding_free: str = _ACTOR.padding_free  # micro-batch layout: "auto" packs only with a varlen kernel
    grad_clip: float = _ACTOR.grad_clip
    gradient_checkpointing: bool = _ACTOR.gradient_checkpointing
    zero_stage: int = _ACTOR.zero_stage     # deepspeed: ZeRO stage, 2 or 3
    cpu_offload: bool = _ACTOR.cpu_offload  # deepspeed: optimizer state (and ZeRO-3 parameters) on the CPU
    sequence_parallel_size: int = _ACTOR.sequence_parallel_size   # S ranks share each sequence (Ulysses)
    seed: int = 0


def vllm_sleep_level(free_cache_engine: bool) -> int:
    """vLLM's sleep level for `rollout.free_cache_engine`: 2 discards weights and KV cache while the actor
    trains (the next sync resends the weights), 0 never sleeps."""
    return 2 if free_cache_engine else 0


@dataclass(frozen=True)
class RolloutSpec:
    """What a rollout engine needs to build itself (one spec for every engine; each reads its part);
    assembled from the config by `controller.roles.rollout_spec`. Defaults are the schema's (`RolloutConfig`,
    `ModelConfig`), so a spec built in a test generates like a run."""

    model_path: str
    engine: str = _ROLLOUT.engine           # a name in `r1ray.engines.ROLLOUT_ENGINES`
    dtype: str = _MODEL.dtype               # weights and compute dtype of the engine
    max_model_len: int = _ROLLOUT.max_prompt_length + _ROLLOUT.max_response_length
    seed: int = 0
    device: str = "cpu"                     # the rollout pool's device, "cpu" | "gpu" (a TP engine's own
                                            # worker holds no GPU: its TP workers do)
    trust_remote_code: bool = _MODEL.trust_remote_code
    attn_implementation: str = _MODEL.attn_implementation                # hf
    generate_batch_size: int = _ROLLOUT.generate_batch_size              # hf: sequences sampled together
    tensor_parallel_size: int = _ROLLOUT.tensor_parallel_size            # vllm: devices (processes) per engine
    gpu_memory_utilization: float = _ROLLOUT.gpu_memory_utilization      # vllm on GPU: share for weights + KV
    sleep_level: int = vllm_sleep_level(_ROLLOUT.free_cache_engine)     # vllm on GPU: 0 never sleeps, 1
                                                                         # offloads weights, 2 discards them
    cpu_kv_cache_gib: int = _ROLLOUT.cpu_kv_cache_gib                    # vllm on CPU: KV cache in whole GiB


class TrainEngine(Protocol):
    def forward_logprobs(self, batch: TrainBatch, temperature: float, with_entropy: bool = False,
                         token_budget: int | None = None) -> tuple[Tensor, Tensor | None]:
        """Per-token logprobs (B, R) of the response tokens, no grad; entropy (B, R) if asked. Micro-batches
        hold `token_budget` tokens per rank (None: `spec.micro_batch_tokens`)."""

    def train_step(self, batch: TrainBatch, loss_fn: LossFn, temperature: float,
                   token_budget: int | None = None) -> dict[str, float]:
        """One optimizer step over `batch`, micro-batched by the token budget; returns metrics
        (the loss_fn's, averaged over micro-batches, plus actor/grad_norm, actor/lr, actor/skipped_steps)."""

    def named_full_weights(self, names: Sequence[str] | None = None) -> Iterator[tuple[str, Tensor]]:
        """Full (unsharded) weights by Hugging Face name, one at a time; each tensor stays valid after the
        next one is yielded. `names` defaults to every state-dict entry (tied weights under each of their names). The
        actor's are its float32 master weights. A collective: every rank must iterate all of it."""

    def parameter_manifest(self, dtype: str) -> Manifest:
        """(name, full shape, `dtype`) of every parameter, tied weights once. Local, no collective."""

    def save(self, path: Path) -> None:
        """Sharded save of weights, optimizer and LR schedule state into the directory `path` (a
        collective; the caller makes the checkpoint atomic)."""

    def load(self, path: Path) -> None:
        """Inverse of `save`: the next `train_step` is the one the saved engine would have taken."""

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

    def receive_weights(self, manifest: Manifest) -> list[FingerprintTable]:
        """Receive and load the actor's weights; one fingerprint table per receiving process."""

    def device_uuids(self) -> list[str]:
        """The GPU UUID of each receiving process (TP worker order; "" off CUDA): colocated "ipc" pairs
        are matched by it, since a TP worker's GPU need not be its own bundle's."""

    def reset_cache(self) -> None:
        """Forget cached KV (prefix cache): it was computed with the previous weights."""

    def sleep(self) -> None:
        """Free accelerator memory while the actor trains on the same devices."""

    def wake(self, tags: Sequence[str]) -> None:
        """Undo `sleep` for "weights" (before a sync) or "kv_cache" (before generation)."""

    def close(self) -> None:
        """Leave the sync group and stop the engine's processes."""
