"""What stops a training run on purpose: a SIGTERM or a first Ctrl-C (stop after the step, with a checkpoint),
a second Ctrl-C (stop at once), and updates that learn nothing (every optimizer step skipped for a
non-finite gradient, update after update)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from r1ray.errors import Interrupted, NonFiniteUpdates

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
    """SIGTERM (what Kubernetes sends a pod it preempts, and `ray job stop`) and a first Ctrl-C (SIGINT) ask
    the loop to stop: the current step finishes, a checkpoint is written and the run ends with `Stopped`.
    A second signal stops at once: a second Ctrl-C raises KeyboardInterrupt (the CLI ends with one line, no
    traceback), a second SIGTERM takes the default action. Outside the loop both keep their usual meaning.
    Installed only in the main thread."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            self._restore()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.requested = signal.Signals(signum).name
        again = "; press Ctrl-C again to stop now" if signum == signal.SIGINT else ""
        logger.warning("%s received: stopping after this step, with a checkpoint%s", self.requested, again)

    def _restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()


def interrupted(step: int, newest: Path | None) -> Interrupted:
    """What a second Ctrl-C during `step` ends the run with: the step it cut short and the newest checkpoint
    (`newest`), from which trainer.resume=auto goes on."""
    saved = f"the last checkpoint is {newest}" if newest else "no checkpoint was written yet"
    return Interrupted(f"stopped at once during step {step}; {saved}; continue with trainer.resume=auto")
