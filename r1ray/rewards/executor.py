"""Scoring batches in a pool of killable worker processes.

Why hand-written rather than concurrent.futures or pebble: a reward that hangs (sympy on a
pathological expression) must be stopped, and the only reliable stop is killing its process.
``ProcessPoolExecutor`` cannot kill one task; pebble can, but here the whole policy (per-sample
deadline that starts when the sample reaches a worker, a batch deadline, replacing killed or
crashed workers, waiting for start-up outside the sample deadline) fits in one small loop over
``multiprocessing.connection.wait``, with no extra dependency and no helper threads, so it works
the same from any thread and inside a Ray actor.

Workers are fresh interpreters (``python -c`` via ``subprocess``, talking over a socket pair with
multiprocessing's ``Connection``). That is multiprocessing's "spawn" without its one trap: spawn
re-runs the parent's ``__main__`` script in every child, which breaks unguarded scripts and
notebooks and re-imports Ray's worker script inside an actor. A fresh interpreter inherits no
threads, locks or CUDA state from the parent (a Ray actor has all three), and the reward code runs
on the worker's main thread, where math-verify's ``signal.alarm`` works. The parent's ``sys.path``
is passed on, so ``"package.module:function"`` rewards import in the worker as they do here.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from types import TracebackType
from typing import Optional, Sequence

from r1ray.rewards.reaper import kill_descendants
from r1ray.rewards.spec import RewardItem, RewardSpec, ScoreBatch, ScoreResult, Status

logger = logging.getLogger(__name__)

_JOIN_TIMEOUT_S = 5.0
# A worker imports sympy and math-verify before it reports ready; on a loaded machine that can
# take tens of seconds, but not minutes.
_STARTUP_TIMEOUT_S = 180.0
_WORKER_BOOT = (
    "import sys; from r1ray.rewards.worker import worker_main; worker_main(int(sys.argv[1]))"
)


def _worker_env() -> dict[str, str]:
    """The parent's environment, with its ``sys.path`` as PYTHONPATH ("" meaning the cwd)."""
    paths = [path or os.getcwd() for path in sys.path]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


@dataclass
class _Worker:
    """Parent-side handle of one worker process."""

    process: subprocess.Popen
    conn: Connection
    ready: bool = False
    index: Optional[int] = None  # the sample it is scoring
    deadline: float = math.inf  # time.monotonic() by which that sample must be done

    @property
    def busy(self) -> bool:
        return self.index is not None


def _reap(process: subprocess.Popen) -> Optional[int]:
    """Wait briefly for an exiting process so it leaves no zombie; its exit code, or None."""
    try:
        return process.wait(_JOIN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        logger.warning(
            "reward worker pid %d did not exit within %.0fs", process.pid, _JOIN_TIMEOUT_S
        )
        return None


def _kill_group(pgid: int) -> None:
    """SIGKILL whatever is left of a worker's process group (processes its reward code started)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is empty: nothing was left behind


class RewardExecutor:
    """Scores :class:`RewardItem` batches with the reward functions of a :class:`RewardSpec`.

    Each sample runs in one of ``spec.num_workers`` processes, which are reused across calls. A
    sample still running after ``spec.sample_timeout_s`` has its worker killed and replaced and is
    marked "timeout"; whatever is unfinished ``spec.batch_timeout_s`` after scoring started (once
    the workers are up) is killed and marked "timeout" too. Timeouts and errors are counted in the
    :class:`ScoreBatch` and have score None: they are never scored 0. Use as a context manager, or
    call ``close()``. Safe to call from any thread; calls are serialised.
    """

    def __init__(self, spec: RewardSpec) -> None:
        self.spec = spec
        self._lock = threading.Lock()  # one batch at a time; the pool is not shared between calls
        self._closed = False
        self._workers = self._build_workers()

    def _build_workers(self) -> list[_Worker]:
        return [self._start_worker() for _ in range(self.spec.num_workers)]

    def _start_worker(self) -> _Worker:
        parent_sock, child_sock = socket.socketpair()
        # Closing the child's end here leaves the child its only holder: its death shows as EOF.
        with child_sock:
            # Its own session (and process group): a reward that starts processes of its own leaves
            # them in the worker's group, and killing the group kills them with it.
            process = subprocess.Popen(
                [sys.executable, "-c", _WORKER_BOOT, str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),),
                env=_worker_env(),
                start_new_session=True,
            )
        conn = Connection(parent_sock.detach())
        conn.send((self.spec.names, self.spec.weights))
        return _Worker(process=process, conn=conn)

    def score(self, items: Sequence[RewardItem]) -> ScoreBatch:
        """Score ``items``; results come back in input order, one per item."""
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardExecutor.score called after close()")
            self._await_workers()
            # reward.language is the default; a row's own extra["language"] wins.
            items = [item if "language" in item.extra else
                     replace(item, extra={**item.extra, "language": self.spec.language}) for item in items]
            results: list[Optional[ScoreResult]] = [None] * len(items)
            pending = deque(range(len(items)))
            try:
                self._run_batch(items, pending, results)
            finally:
                # Also on an exception (Ctrl-C): a worker left busy would later deliver a result
                # into the wrong batch.
                self._abandon_batch(pending, results)
        batch = ScoreBatch([r for r in results if r is not None])
        if batch.n_timeout or batch.n_error:
            logger.warning(
                "reward scoring: %d timeout(s), %d error(s) in %d samples; first: %s",
                batch.n_timeout,
                batch.n_error,
                len(items),
                batch.first_error,
            )
        return batch

    def _run_batch(
        self, items: Sequence[RewardItem], pending: deque[int], results: list[Optional[ScoreResult]]
    ) -> None:
        """Dispatch, collect and enforce deadlines until everything is done or the batch is late."""
        batch_deadline = time.monotonic() + self.spec.batch_timeout_s
        while pending or any(worker.busy for worker in self._workers):
            if time.monotonic() >= batch_deadline:
                return
            self._dispatch(pending, items, results)
            next_deadline = min([batch_deadline] + [worker.deadline for worker in self._workers])
            self._receive(next_deadline - time.monotonic(), results)
            self._kill_overdue(results)

    def _await_workers(self) -> None:
        """Block until every worker has started, so that start-up is not charged to the batch."""
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while not all(worker.ready for worker in self._workers):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"reward workers did not start within {_STARTUP_TIMEOUT_S:.0f}s"
                )
            self._receive(remaining, results=[])  # no worker is busy: only start-up messages come

    def _failure(self, status: Status, error: str) -> ScoreResult:
        return ScoreResult(None, {name: None for name in self.spec.names}, status, error)

    def _dispatch(
        self, pending: deque[int], items: Sequence[RewardItem], results: list[Optional[ScoreResult]]
    ) -> None:
        """Hand pending samples to idle, started workers; the sample clock starts here."""
        for worker in self._workers:
            if not pending:
                return
            if not worker.ready or worker.busy:
                continue
            index = pending.popleft()
            try:
                worker.conn.send((index, items[index]))
            except (BrokenPipeError, ConnectionError, EOFError):
                pending.appendleft(index)  # the worker died while idle: the sample is not at fault
                self._replace(worker)
                continue
            except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable extra; blame the sample
                results[index] = self._failure("error", f"cannot send sample: {exc}")
                continue
            worker.index = index
            worker.deadline = time.monotonic() + self.spec.sample_timeout_s

    def _receive(self, timeout_s: float, results: list[Optional[ScoreResult]]) -> None:
        """Wait up to ``timeout_s`` for messages from starting or busy workers and handle them."""
        waiting = {w.conn: w for w in self._workers if w.busy or not w.ready}
        if not waiting:
            return
        for conn in wait(list(waiting), timeout=max(timeout_s, 0.0)):
            worker = waiting[conn]  # type: ignore[index]
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                self._on_death(worker, results)
                continue
            if message[0] == "ready":
                worker.ready = True
            elif message[0] == "failed":
                raise RuntimeError(f"a reward worker failed to start:\n{message[1]}")
            else:
                _, index, result = message
                results[index] = result
                worker.index, worker.deadline = None, math.inf

    def _on_death(self, worker: _Worker, results: list[Optional[ScoreResult]]) -> None:
        """A worker exited on its own (crash, OOM kill): fail its sample and replace it."""
        code = _reap(worker.process)
        if not worker.ready:
            raise RuntimeError(f"a reward worker exited during start-up (exit code {code})")
        if worker.index is not None:
            message = f"reward worker died (exit code {code})"
            results[worker.index] = self._failure("error", message)
        self._replace(worker)

    def _kill_overdue(self, results: list[Optional[ScoreResult]]) -> None:
        now = time.monotonic()
        for worker in self._workers:
            if worker.index is not None and worker.deadline <= now:
                names = ", ".join(self.spec.names)  # the worker does not say which one was running
                message = f"sample exceeded sample_timeout_s={self.spec.sample_timeout_s} in {names}"
                results[worker.index] = self._failure("timeout", message)
                self._replace(worker)

    def _abandon_batch(self, pending: deque[int], results: list[Optional[ScoreResult]]) -> None:
        """At the batch deadline: kill what is still running, and time out what never started."""
        message = f"batch exceeded batch_timeout_s={self.spec.batch_timeout_s}"
        for worker in self._workers:
            if worker.index is not None:
                results[worker.index] = self._failure("timeout", message)
                self._replace(worker)
        for index in pending:
            results[index] = self._failure("timeout", message + " before the sample started")

    def _replace(self, worker: _Worker) -> None:
        """Kill ``worker`` (SIGKILL: a hung sympy call ignores anything gentler), start another."""
        self._stop(worker, graceful=False)
        self._workers[self._workers.index(worker)] = self._start_worker()

    @staticmethod
    def _stop(worker: _Worker, graceful: bool) -> None:
        if graceful and worker.process.poll() is None:
            try:
                worker.conn.send(None)
                worker.process.wait(1.0)
            except (OSError, subprocess.TimeoutExpired):
                pass  # gone already, or ignoring us: killed below
        if worker.process.poll() is None:
            # The worker adopts every orphan of its rewards (a subreaper): its tree holds them all,
            # daemons that left its process group included.
            kill_descendants(worker.process.pid)
            worker.process.kill()
        _reap(worker.process)
        _kill_group(worker.process.pid)
        worker.conn.close()

    def close(self) -> None:
        """Stop every worker process. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for worker in self._workers:
                self._stop(worker, graceful=True)

    def __enter__(self) -> RewardExecutor:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


def score_one(
    names: Sequence[str],
    weights: Sequence[float],
    response: str,
    ground_truth: str,
    extra: Optional[dict] = None,
    sample_timeout_s: float = RewardSpec.sample_timeout_s,
) -> ScoreResult:
    """Score one response through a one-worker executor (the real path, as the ``r1ray score``
    CLI needs). ``extra["data_source"]``, if present, selects the accuracy reward of ``auto``."""
    extra = dict(extra or {})
    spec = RewardSpec(
        names=names,
        weights=weights,
        sample_timeout_s=sample_timeout_s,
        batch_timeout_s=sample_timeout_s + 5.0,  # the sample's own limit is the one that matters
        num_workers=1,
    )
    item = RewardItem(response, ground_truth, str(extra.get("data_source", "")), extra)
    with RewardExecutor(spec) as executor:
        return executor.score([item]).results[0]
