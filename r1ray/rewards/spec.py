"""Data types of reward scoring: what to run, what to score, and what came back."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

from r1ray.config import RewardConfig
from r1ray.rewards.registry import get_reward_fn

# The schema is the one source of these defaults (`r1ray score` used to time out after 20 s, training after 10 s).
_DEFAULTS = RewardConfig()

Status = Literal["ok", "timeout", "error", "unscorable"]


@dataclass(frozen=True)
class RewardSpec:
    """Which reward functions to combine and how to run them.

    Attributes:
        names: reward function names (see ``reward_names()``) or "package.module:function" paths.
        weights: one weight per name; the score is the weighted sum of the components.
        sample_timeout_s: a sample still running after this long has its worker process killed.
        batch_timeout_s: whatever is unfinished this long after scoring starts is killed (the clock
            starts once the workers are up, so interpreter start-up is not charged to a batch).
        num_workers: worker processes in the pool.
        language: target language of the language-consistency reward for samples whose row does not
            name one in ``extra["language"]`` (``reward.language``).
    """

    names: Sequence[str]
    weights: Sequence[float]
    sample_timeout_s: float = _DEFAULTS.sample_timeout_s
    batch_timeout_s: float = _DEFAULTS.batch_timeout_s
    num_workers: int = _DEFAULTS.processes
    language: str = _DEFAULTS.language

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        if not self.names:
            raise ValueError("RewardSpec.names is empty: name at least one reward function")
        if len(self.weights) != len(self.names):
            raise ValueError(
                f"RewardSpec has {len(self.names)} names but {len(self.weights)} weights; "
                "give one weight per reward function"
            )
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"RewardSpec.names repeats a name: {list(self.names)}")
        if not all(math.isfinite(w) for w in self.weights):
            raise ValueError(f"RewardSpec.weights must be finite numbers, got {list(self.weights)}")
        if self.sample_timeout_s <= 0 or self.batch_timeout_s <= 0:
            raise ValueError("RewardSpec timeouts must be > 0 seconds")
        if self.num_workers < 1:
            raise ValueError(f"RewardSpec.num_workers must be >= 1, got {self.num_workers}")
        for name in self.names:
            get_reward_fn(name)  # unknown names fail here, with a did-you-mean, not in a worker

    @property
    def weight_map(self) -> dict[str, float]:
        """Name -> weight."""
        return dict(zip(self.names, self.weights))


@dataclass
class RewardItem:
    """One sample to score. ``data_source`` is passed to the reward functions as
    ``extra["data_source"]`` (it selects the accuracy reward of ``auto``)."""

    response: str
    ground_truth: str
    data_source: str = ""
    extra: dict = field(default_factory=dict)


class RewardFailure(RuntimeError):
    """No sample could be scored for reward.max_failed_steps steps in a row; the message gives the first error."""


@dataclass
class ScoreResult:
    """The outcome for one sample.

    Attributes:
        score: weighted sum of the components; None unless status is "ok".
        components: name -> that function's score (None: unscorable, or not reached).
        status: "ok"; "unscorable" (a function returned None); "timeout" (killed, or an internal
            time limit fired); "error" (a function raised, or the worker died).
        error: what went wrong, "" when status is "ok" or "unscorable".
        output: the last bytes the reward functions wrote to stdout/stderr for this sample (captured in
            the worker process, bounded: ``r1ray/rewards/capture.py``).
        output_bytes: how many bytes they wrote in all.
    """

    score: Optional[float]
    components: dict[str, Optional[float]]
    status: Status
    error: str = ""
    output: str = ""
    output_bytes: int = 0


@dataclass
class ScoreBatch:
    """Results in input order, with the failures counted (they are never scored 0)."""

    results: list[ScoreResult]

    @property
    def scores(self) -> list[Optional[float]]:
        """Per-sample scores; None for samples that could not be scored."""
        return [result.score for result in self.results]

    def _count(self, status: Status) -> int:
        return sum(result.status == status for result in self.results)

    @property
    def n_timeout(self) -> int:
        """Samples killed or stopped by a time limit."""
        return self._count("timeout")

    @property
    def n_error(self) -> int:
        """Samples whose reward function raised or whose worker died."""
        return self._count("error")

    @property
    def first_error(self) -> str:
        """The message of the first sample that timed out or raised ("" when none did)."""
        return next((r.error for r in self.results if r.status in ("error", "timeout") and r.error), "")

    @property
    def n_scored(self) -> int:
        """Samples that got a score."""
        return self._count("ok")

    @property
    def n_unscorable(self) -> int:
        """Samples a reward function declared unscorable (returned None)."""
        return self._count("unscorable")

    def metrics(self) -> dict[str, float]:
        """verl-style metrics: ``reward/mean`` over scored samples, ``rewards/<fn>/mean`` over
        samples where that function gave a score, and the failure counts."""
        out: dict[str, float] = {
            "reward/timeout_count": float(self.n_timeout),
            "reward/error_count": float(self.n_error),
            "reward/unscorable_count": float(self.n_unscorable),
            # bytes the reward functions printed (captured, not logged: only a bounded tail is kept)
            "reward/output_bytes": float(sum(r.output_bytes for r in self.results)),
        }
        scored = [s for s in self.scores if s is not None]
        if scored:
            out["reward/mean"] = sum(scored) / len(scored)
        names = {name for result in self.results for name in result.components}
        for name in sorted(names):
            values = [r.components.get(name) for r in self.results]
            values = [value for value in values if value is not None]
            if values:
                out[f"rewards/{name}/mean"] = sum(values) / len(values)
        return out
