"""The actor: the trained policy. Policy updates, full-weight streaming for the sync, checkpoints."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from r1ray.protocol import TrainBatch, split_batch
from r1ray.workers.engines import EngineSpec
from r1ray.models.export import write_hf_model
from r1ray.models.load_errors import checkpoint_load_errors
from r1ray.workers.losses import ActorLoss, LossSettings, SFTLoss, denominator
from r1ray.workers.policy import PolicyWorker
from r1ray.workers.weight_sync import Manifest, SyncGroup, SyncGroupSpec


class ActorWorker(PolicyWorker):
    def __init__(self, role: str, rank: int, world_size: int, engine_kind: str, spec: EngineSpec,
                 loss: LossSettings):
        super().__init__(role, rank, world_size, engine_kind, spec)
        self.loss = loss
        self.sync: SyncGroup | None = None

    def update(self, batch: TrainBatch, *, temperature: float, kl_coef: float, mini_batches: int,
               ppo_epochs: int, token_budget: int | None = None) -> dict[str, float]:
        """ppo_epochs x mini_batches optimizer steps on this rank's share, `token_budget` tokens per
        micro-batch; metrics averaged over steps."""
        settings = replace(self.loss, kl_coef=kl_coef)
        totals: dict[str, float] = {}
        steps = 0
        for _ in range(ppo_epochs):
            for mini in split_batch(batch, mini_batches):
                global_den = torch.tensor([denominator(mini.response_mask, settings.agg)], dtype=torch.float64)
                if dist.is_initialized():
                    dist.all_reduce(global_den)
                loss_fn = ActorLoss(settings, float(global_den), self.world_size)
                for key, value in self.engine.train_step(mini, loss_fn, temperature, token_budget).items():
                    totals[key] = totals.get(key, 0.0) + value
                steps += 1
        # Counts stay counts (optimizer steps skipped for a non-finite gradient); the rest are means.
        return {key: value if key == "actor/skipped_steps" else value / steps for key, value in totals.items()}

    def sft_update(self, batch: TrainBatch) -> dict[str, float]:
        """One SFT optimizer step (response-token NLL) on this rank's share of the batch."""
        tokens = torch.tensor([float(batch.response_mask.sum())], dtype=torch.float64)
        if dist.is_initialized():
            dist.all_reduce(tokens)
        return self.engine.train_step(batch, SFTLoss(float(tokens), self.world_size), temperature=1.0)

    def save_hf(self, out: str) -> str | None:
        """Write the current policy as a Hugging Face model (all ranks gather; rank 0 writes)."""
        weights = {name: t.cpu() for name, t in self.engine.named_full_weights()}
        if self.rank != 0:
            return None
        return str(write_hf_model(weights, Path(self.spec.model_path), Path(out)))

    def weight_manifest(self, dtype: str) -> Manifest:
        """(name, shape, dtype) of every parameter (tied weights once), cast to the rollout dtype."""
        return self.engine.parameter_manifest(dtype)

    def init_weight_sync(self, spec: SyncGroupSpec | None) -> None:
        """Join a weight-sync group as its sender (sync rank 0): rank 0 for a shared group, every rank for
        its own colocated "ipc" pair; None for a rank that sends to no one."""
        self.sync = SyncGroup(spec, 0, self.device) if spec is not None else None

    def send_weights(self, manifest: Manifest) -> list[list[int]] | None:
        """All ranks gather full weights (a collective); each rank in a sync group sends them and returns the
        fingerprint of every tensor it sent (all equal: every rank gathered the same full tensors)."""
        weights = self.engine.named_full_weights([name for name, _, _ in manifest])
        if self.sync is None:
            for _ in weights:
                pass
            return None
        return self.sync.send(manifest, weights)

    def full_weights(self) -> dict | None:
        """Every full weight by name, on CPU, returned by rank 0 (a collective: call it on all ranks).
        Tests compare it with the rollout engines' and the exported weights."""
        weights = {name: tensor.cpu().clone() for name, tensor in self.engine.named_full_weights()}
        return weights if self.rank == 0 else None

    def save(self, path: str) -> None:
        target = Path(path)
        target.mkdir(parents=True, exist_ok=True)
        self.engine.save(target)

    def load(self, path: str) -> None:
        """A checkpoint's actor state; another model's checkpoint is an InputMismatch naming the tensor."""
        with checkpoint_load_errors(Path(path).parent):
            self.engine.load(Path(path))

    def shutdown(self) -> None:
        if self.sync is not None:
            self.sync.close()
        super().shutdown()
