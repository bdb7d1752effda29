"""A reward worker: fans scoring out over the core's killable subprocess pool on a CPU node."""

from __future__ import annotations

from r1ray.rewards import RewardExecutor, RewardItem, RewardSpec, ScoreBatch
from r1ray.workers.base import Worker


class RewardWorker(Worker):
    def __init__(self, role: str, rank: int, world_size: int, spec: RewardSpec):
        super().__init__(role, rank, world_size)
        self.spec = spec
        self.executor: RewardExecutor | None = None

    def setup(self) -> None:
        self.executor = RewardExecutor(self.spec)

    def score(self, items: list[RewardItem]) -> ScoreBatch:
        return self.executor.score(items)

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.close()
        super().shutdown()
