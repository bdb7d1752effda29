"""What stops a training run on purpose: a SIGTERM (stop after the step, with a checkpoint) and updates that
learn nothing (every optimizer step skipped for a non-finite gradient, update after update)."""

from __future__ import annotations

import logging
import os
import signal
import threading

from r1ray.errors import NonFiniteUpdates

logger = logging.getLogger(__name__)


def watch_skipped(in_a_row: int, metrics: dict[str, float], optimizer_steps: int, limit: int) -> int:
    """Updates in a row whose every optimizer step was skipped for a non-finite gradient (the engine keeps
    the weights then); NonFiniteUpdates at `limit`, since such a run learns nothing."""
    skipped = metrics.get("actor/skipped_steps", 0.0)
    in_a_row = in_a_row + 1 if skipped >= optimizer_steps else 0
    if in_a_row >= limit:
        raise NonFiniteUpdates(f"actor: the loss or gradient norm was not finite (last grad norm "
                               f"{metrics.get('actor/grad_norm', float('nan'))}) in every optimizer step of {limit} "
                               f"updates in a row, so nothing was learned; lower actor.lr, check the rewards and "
                               f"model.dtype, or raise actor.max_skipped_steps")
    return in_a_row


class StopRequest:
    """SIGTERM (what Kubernetes sends a pod it preempts, and `ray job stop`) asks the loop to stop: the
    current step finishes, a checkpoint is written and the run ends with `Stopped`. A second SIGTERM, or
    one outside the loop, takes the default action (exit at once). Installed only in the main thread."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._installed = False
        self._previous = None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        self.requested = signal.Signals(signum).name
        logger.warning("%s received: stopping after this step, with a checkpoint", self.requested)

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
