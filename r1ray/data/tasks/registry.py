"""The task registry: name -> generator, and ``make_task`` that writes a generated data file."""

from __future__ import annotations

import difflib
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1ray.data.files import write_rows
from r1ray.data.tasks import arithmetic, countdown, gsm8k, knights_knaves

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """A task generator: ``generate(n, seed, **knobs)`` returns ``n`` verl-layout rows, deterministic per seed."""

    name: str
    data_source: str
    generate: Callable[..., list[dict[str, Any]]]
    help: str

    def knobs(self) -> dict[str, Any]:
        """The generator's keyword knobs and their defaults."""
        params = inspect.signature(self.generate).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("arithmetic", arithmetic.DATA_SOURCE, arithmetic.generate,
                 "multi-digit arithmetic 'What is 37 + 85?' (knobs: digits, operations)"),
        TaskSpec("countdown", countdown.DATA_SOURCE, countdown.generate,
                 "reach a target from 3-4 numbers with + - * / (knobs: min_numbers, max_numbers, max_number)"),
        TaskSpec("knights_knaves", knights_knaves.DATA_SOURCE, knights_knaves.generate,
                 "Knights and Knaves puzzles with one solution (knob: n_people 2-8)"),
        TaskSpec("gsm8k", gsm8k.DATA_SOURCE, gsm8k.generate,
                 "GSM8K grade-school math converted from a local file (knob: source=PATH)"),
    )
}


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def get_task(task: str) -> TaskSpec:
    """The registered task called ``task``; ValueError with a did-you-mean otherwise."""
    if task not in TASKS:
        names = sorted(TASKS)
        raise ValueError(f"unknown task {task!r} (choose one of {', '.join(names)}){_did_you_mean(task, names)}")
    return TASKS[task]


def make_task(task: str, n: int, out: str | os.PathLike, seed: int = 0, **knobs: Any) -> Path:
    """Generate ``n`` rows of ``task`` and write them to ``out`` atomically.

    Args:
        task: a name in ``TASKS``.
        n: number of rows.
        out: destination; Parquet when it ends with ``.parquet``, JSONL otherwise.
        seed: the same seed and knobs always give the same file.
        knobs: task-specific options (``TASKS[task].knobs()`` lists them).

    Returns:
        The written path.
    """
    spec = get_task(task)
    if n < 1:
        raise ValueError(f"{task}: n must be >= 1, got {n}")
    allowed = spec.knobs()
    for knob in knobs:
        if knob not in allowed:
            raise ValueError(
                f"{task}: unknown knob {knob!r} (knobs: {', '.join(allowed)}){_did_you_mean(knob, list(allowed))}"
            )
    rows = spec.generate(n, seed, **knobs)
    logger.info("generated %d %s rows (seed %d, %s)", len(rows), task, seed, knobs or "default knobs")
    return write_rows(rows, out)
