"""Free-running asynchronous rollouts: the engines keep generating while the actor trains.

`trainer.async_mode=free_running` with `trainer.max_staleness` K >= 1. A thread of the controller (the
pump) keeps every rollout engine busy: it admits groups while admission control allows
(`partial_rollouts.admissible`), sends each engine one round of calls at a time (the next segment of each
of its unfinished groups, `GroupBuffer.next_calls`), and appends what comes back. The trainer's thread
takes a step's groups (`take`): the first `prompts_per_step` finished ones, after evicting the groups that
could no longer train within K versions.

A weight sync is sent under the pump's lock, so no round is sent between its two halves; each engine
receives it after its current round (Ray runs one caller's calls to an actor in submission order) and the
responses it is generating go on under the new weights at their next segment. The sync keeps its deadline
(`trainer.collective_timeout_s`); an engine that dies fails the pump's call or the sync, and the Trainer's
restart path takes over. With `trainer.pause_mode=keep` an engine's round is one `advance` call instead
(`KeepRound`): its requests stay in the engine between rounds and across syncs. Free running is not
reproducible (what finishes first depends on timing): use fixed lag for that.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import replace
from typing import Callable, Iterator

import ray

from r1ray.protocol import PromptBatch, RolloutBatch, SamplingParams, concat_batches, derive_seed

from r1ray.controller.partial_rollouts import Call, GroupBuffer, KeepRound, admissible, rows_of

logger = logging.getLogger(__name__)

POLL_S = 0.05         # how long the pump waits for an engine call before it looks at admission again


class FreeRunningRollouts:
    """The pump and its buffer. `draw()` gives the sampler's next PromptBatch; `budget()` the response
    budget for groups admitted now; `template` the sampling of every call (its n, max_new_tokens and seed
    are set per call); `decode(token lists)` the response texts (decoded whole, never per segment, so a
    character split over two segments decodes as in one piece)."""

    def __init__(self, rollout, *, bound: int, per_step: int, n: int, segment_tokens: int, on_stale: str,
                 draw: Callable[[], PromptBatch], budget: Callable[[], int], template: SamplingParams,
                 decode: Callable[[list[list[int]]], list[str]], keep: bool = False):
        self.rollout = rollout                        # the RolloutGroup
        self.keep = keep                              # trainer.pause_mode=keep: the engines hold the requests
        self.buffer = GroupBuffer(n, per_step, bound, segment_tokens, on_stale, keep=keep)
        self.kept_over_updates: dict[int, int] = {}   # keep: engine -> responses kept across updates so far
        self.bound, self.per_step = bound, per_step
        self._draw, self._budget, self._template, self._decode = draw, budget, template, decode
        self.lock = threading.RLock()
        self._changed = threading.Condition(self.lock)
        self.actor_version = 0                        # the actor's updates so far
        self.engine_version = 0                       # the version every engine has loaded
        self._taking = False                          # the trainer waits in take(): it trains at actor_version
        self._calls = 0
        self.taken_indices: list[int] = []            # dataset indices of the groups the last take returned
        self._in_flight: dict[ray.ObjectRef, Call | KeepRound] = {}
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the trainer's side ------------------------------------------------------------------------
    def start(self) -> None:
        """Start generating (after the engines received the actor's weights)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._pump, name="r1ray-free-running", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._thread = None

    def take(self) -> tuple[RolloutBatch, dict[str, float]]:
        """The next step's batch: `per_step` finished groups within the bound at the actor's version."""
        with self._changed:
            self._taking = True
            self._changed.notify_all()           # admission may allow more now
            try:
                while True:
                    if self._error is not None:
                        raise self._error
                    stale = self.buffer.evict_stale(self.actor_version)
                    if stale:
                        logger.info("free running: %d group(s) older than trainer.max_staleness=%d %s", len(stale),
                                    self.bound, "regenerated" if self.buffer.on_stale == "regenerate" else "dropped")
                    groups = self.buffer.take(self.per_step)
                    if groups is not None:
                        break
                    self._changed.wait(timeout=1.0)
            finally:
                self._taking = False
            in_flight = self.buffer.outstanding()
        texts = [self._decode([r.tokens for r in g.responses]) for g in groups]
        batch = concat_batches([g.to_rollout(t) for g, t in zip(groups, texts)])
        metrics = {"async/regenerated_groups": float(self.buffer.regenerated),
                   "async/dropped_groups": float(self.buffer.dropped), "async/groups_ahead": float(in_flight)}
        if self.keep:
            metrics["async/kept_over_updates"] = float(sum(self.kept_over_updates.values()))
        self.taken_indices = [g.prompt.indices[0] for g in groups]
        return batch, metrics

    def trained(self, version: int) -> None:
        """The actor took an update: it is at `version` now."""
        with self._changed:
            self.actor_version = version
            self._changed.notify_all()

    @contextmanager
    def syncing(self) -> Iterator[None]:
        """Hold the pump while a weight sync is sent (no round goes between its halves) and waited for."""
        with self._changed:
            yield

    def engines_at(self, version: int) -> None:
        """Every engine loaded the weights of `version`."""
        with self._changed:
            self.engine_version = version
            self._changed.notify_all()

    def requeue(self, prompts: PromptBatch) -> None:
        """Prompts given out before a checkpoint and not trained: generated first, in order."""
        with self._changed:
            self.buffer.waiting.extend(rows_of(prompts))

    def unfinished(self) -> PromptBatch | None:
        """Every prompt given out and not trained (call under `lock`, with the sampler's state)."""
        prompts = self.buffer.unfinished_prompts()
        return concat_batches(prompts) if prompts else None

    # ---- the pump ----------------------------------------------------------------------------------
    def _pump(self) -> None:
        try:
            while not self._stop.is_set():
                with self._changed:
                    self._admit()
                    self._send()
                    refs = list(self._in_flight)
                if not refs:
                    with self._changed:
                        self._changed.wait(timeout=POLL_S)
                    continue
                done, _ = ray.wait(refs, num_returns=len(refs), timeout=POLL_S)
                for ref in done:
                    result = ray.get(ref)                # an engine's failure ends the pump, and take() raises it
                    with self._changed:
                        self._land(self._in_flight.pop(ref), result)
                        self._changed.notify_all()
        except BaseException as exc:       # noqa: BLE001 - handed to the trainer's thread, which raises it
            with self._changed:
                self._error = exc
                self._changed.notify_all()

    def _land(self, call: Call | KeepRound, result) -> None:
        if isinstance(call, KeepRound):
            version, rows, kept = result
            self.buffer.merge_kept(version, rows)
            self.kept_over_updates[call.engine] = kept
            self.buffer.landed(set(call.gids))
            return
        self.buffer.merge(call, result)
        busy = {gid for c in self._in_flight.values() if c.engine == call.engine for gid, _ in c.rows}
        self.buffer.landed({gid for gid, _ in call.rows} - busy)

    def _admit(self) -> None:
        """Admit groups while a group admitted now would still train within the bound."""
        engines = len(self.rollout.workers)
        next_train = self.actor_version if self._taking else self.actor_version + 1
        while admissible(self.buffer.outstanding(), self.per_step, self.bound, next_train, self.engine_version):
            if not self.buffer.waiting:
                self.buffer.waiting.extend(rows_of(self._draw()))
            engine = min(range(engines), key=self.buffer.load)
            self.buffer.admit(self.buffer.waiting.popleft(), self._budget(), engine)

    def _send(self) -> None:
        """One round of calls to every engine that has none in flight."""
        busy = {c.engine for c in self._in_flight.values()}
        for engine, worker in enumerate(self.rollout.workers):
            if engine in busy:
                continue
            if self.keep:
                round_ = self.buffer.next_round(engine, self._template)
                if round_ is not None:
                    self._calls += 1
                    sampling = replace(round_.sampling, seed=derive_seed(self._template.seed, self._calls))
                    ref = worker.advance.remote(round_.prompts, round_.keys, round_.budgets, sampling, round_.abort,
                                                self.buffer.segment)
                    self._in_flight[ref] = round_
                continue
            for call in self.buffer.next_calls(engine, self._template):
                self._calls += 1
                sampling = replace(call.sampling, seed=derive_seed(self._template.seed, self._calls))
                self._in_flight[worker.generate.remote(call.prompts, sampling)] = call
