"""Step metrics with the names verl and TRL users know (docs/design.md §2), and the stage timer."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch

from r1ray.protocol import RolloutBatch


class StageTimer:
    """`with timer("generate"): ...` records timing_s/generate; `timing_s/step` covers the whole step."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.stages: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[stage] = self.stages.get(stage, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        out = {f"timing_s/{k}": v for k, v in self.stages.items()}
        out["timing_s/step"] = time.perf_counter() - self.start
        return out


def staleness_metrics(rollout: RolloutBatch, trained_version: int, max_staleness: int) -> dict[str, float]:
    """How many versions each response token lags the actor that trains on it: mean, max and the
    fraction at each lag 0..K (the histogram). A token beyond the bound K is a bug in the queue (it
    keeps the bound by construction): AssertionError, before any update uses it."""
    if rollout.token_versions is None:
        return {}
    valid = rollout.response_mask().bool()
    lag = (trained_version - rollout.token_versions)[valid]
    if lag.numel() == 0:
        return {}
    if int(lag.max()) > max_staleness or int(lag.min()) < 0:
        raise AssertionError(f"rollout tokens {int(lag.min())}..{int(lag.max())} versions behind the actor "
                             f"(version {trained_version}); trainer.max_staleness={max_staleness}")
    out = {"async/staleness_mean": float(lag.float().mean()), "async/staleness_max": float(lag.max())}
    for k in range(max_staleness + 1):
        out[f"async/staleness_frac_{k}"] = float((lag == k).float().mean())
    return out


def rollout_metrics(rollout: RolloutBatch, budget: int) -> dict[str, float]:
    lens = rollout.response_lens.float()
    prompt = rollout.prompt_lens.float()
    return {
        "response_length/mean": float(lens.mean()),
        "response_length/max": float(lens.max()),
        "response_length/min": float(lens.min()),
        "response_length/clip_ratio": float(rollout.truncated.float().mean()),
        "response_length/budget": float(budget),
        "prompt_length/mean": float(prompt.mean()),
    }


def mean_over_ranks(per_rank: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for m in per_rank for k in m}
    return {k: sum(m[k] for m in per_rank if k in m) / sum(k in m for m in per_rank) for k in sorted(keys)}


def throughput(rollout: RolloutBatch, seconds: float, n_devices: int) -> dict[str, float]:
    """Tokens (prompt + response) processed per second per device, as verl reports it."""
    tokens = float(torch.sum(rollout.cu_seqlens[-1]))
    return {"perf/throughput": tokens / max(seconds, 1e-9) / max(n_devices, 1), "perf/time_per_step": seconds,
            "perf/total_tokens": tokens}
