"""Scoring one sample, and the loop a reward worker process runs.

The loop runs on the main thread of its own process, which is what math-verify's ``signal.alarm``
timeouts need (docs/design.md §6). Messages on the socket, parent -> worker: first ``(names, weights)``,
then ``(index, RewardItem)`` per sample, or ``None`` (exit). Worker -> parent: ``("ready", None)``
once, or ``("failed", traceback)`` if start-up fails, then ``("result", index, ScoreResult)`` per
sample.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import traceback
from multiprocessing.connection import Connection
from dataclasses import replace
from typing import Optional, Sequence

from r1ray.rewards.base import RewardTimeout
from r1ray.rewards.capture import CapturedOutput
from r1ray.rewards.reaper import become_subreaper, kill_descendants
from r1ray.rewards.combine import combine_scores
from r1ray.rewards.registry import get_reward_fn
from r1ray.rewards.spec import RewardItem, ScoreResult

logger = logging.getLogger(__name__)


def _component(value: object) -> Optional[float]:
    """A reward function's return value as a finite float or None; TypeError/ValueError otherwise
    (only a user-supplied function can break the contract like this)."""
    if value is None:
        return None
    score = float(value)  # type: ignore[arg-type]
    if not math.isfinite(score):
        raise ValueError(f"non-finite score {score}")
    return score


def score_item(names: Sequence[str], weights: Sequence[float], item: RewardItem) -> ScoreResult:
    """Run every named reward function on one sample and combine the scores, in this process.

    A :class:`RewardTimeout` gives status "timeout", any other exception "error" (both with score
    None and the components computed so far), a None component "unscorable".
    """
    extra = dict(item.extra or {})
    if item.data_source:
        extra["data_source"] = item.data_source
    components: dict[str, Optional[float]] = {name: None for name in names}
    for name in names:
        try:
            value = get_reward_fn(name)(item.response, item.ground_truth, extra)
            components[name] = _component(value)
        except RewardTimeout as exc:
            return ScoreResult(None, components, "timeout", f"{name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - reported as status "error", never as a score
            logger.debug("reward %s raised", name, exc_info=True)
            return ScoreResult(None, components, "error", f"{name}: {type(exc).__name__}: {exc}")
    score = combine_scores(components, dict(zip(names, weights)))
    if score is None:
        return ScoreResult(None, components, "unscorable")
    return ScoreResult(score, components, "ok")


def _warm_up(names: Sequence[str]) -> None:
    """Resolve the functions and load math-verify's grammar now, so that the first sample's time
    limit is not spent importing sympy."""
    for name in names:
        get_reward_fn(name)
    get_reward_fn("math")("<answer>1</answer>", "1", {})


def worker_main(fd: int) -> None:
    """Entry point of a reward worker process: score samples from the socket ``fd`` until told to
    stop or until the parent goes away."""
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Orphans of whatever the rewards start (a double-forked daemon) are adopted here, not by init, so
    # that they can be found and killed (r1ray/rewards/reaper.py).
    become_subreaper()
    conn = Connection(fd)
    try:
        names, weights = conn.recv()
        _warm_up(names)
    except BaseException:  # noqa: BLE001 - any start-up failure is reported to the parent
        conn.send(("failed", traceback.format_exc()))
        return
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the parent has gone away
            return
        if message is None:
            return
        index, item = message
        conn.send(("result", index, captured_score(names, weights, item)))


# Of a failed reward's output, what its one-line error message quotes.
ERROR_OUTPUT_CHARS = 300


def captured_score(names: Sequence[str], weights: Sequence[float], item: RewardItem) -> ScoreResult:
    """`score_item` with the sample's stdout/stderr captured: its tail and size go into the result (and
    the end of it into the error of a reward that raised), none of it into the log or the terminal."""
    with CapturedOutput() as out:
        result = score_item(names, weights, item)
        # Nothing a reward started outlives its sample: a process still running (a daemon) is killed,
        # with what it wrote so far counted.
        kill_descendants(os.getpid())
    result = replace(result, output=out.tail, output_bytes=out.total_bytes)
    if result.status == "error" and out.total_bytes:
        last = " ".join(out.tail.split())[-ERROR_OUTPUT_CHARS:]
        result = replace(result, error=f"{result.error} (it printed {out.total_bytes} bytes, ending: {last!r})")
    return result
