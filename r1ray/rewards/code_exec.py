"""Code-execution reward (``code``): run the response's program against the sample's tests.

DeepSeek-R1 scores programming problems by running the model's code against test cases; this is that
rule. The program is the last fenced code block of the ``<answer>`` (of the whole response when there
is no ``<answer>``), preferring a block tagged ``python``/``py``/``python3`` over an untagged one, so
that a trailing block of sample output is not taken for the program. No code block scores 0.

The ground truth is one of (docs/rewards_code.md):

- a JSON object ``{"inputs": [stdin, ...], "outputs": [expected stdout, ...]}``: the program runs once per
  case; the score is the fraction of cases whose stdout matches (compared line by line, ignoring trailing
  whitespace and blank lines at the end);
- anything else is Python test code (``assert solve(2) == 4``) appended after the program and run once:
  1.0 if it exits with status 0, else 0.0.

Each run is a sandboxed subprocess (:mod:`r1ray.rewards.sandbox`). A program that crashes, hangs, runs
out of memory or breaks a sandbox rule simply fails its tests: the score is 0, never an error. A sandbox
that cannot start the program at all raises :class:`~r1ray.rewards.sandbox.SandboxError`, which the
executor counts as an error: a broken environment must not read as wrong code. Limits
come from :class:`~r1ray.rewards.sandbox.Limits` and can be set per sample in ``extra`` as ``code_<limit>``
(``code_timeout_s``, ``code_memory_mb``, ...), plus ``code_total_timeout_s`` for all cases of a sample
together (default 8 s): cases not started within it fail. Keep it, and ``code_timeout_s``, below
``reward.sample_timeout_s`` (10 s by default) so that a slow program is scored 0 here rather than
counted as a reward timeout.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Optional, Union

from r1ray.rewards.extract import extract_answer_tag
from r1ray.rewards.sandbox import Limits, run_python

logger = logging.getLogger(__name__)

TOTAL_TIMEOUT_S = 8.0
# A case is not started with less time than this left: interpreter start-up alone takes ~0.1 s, and a
# run cut short before the program starts is a SandboxError, not a failed case.
_MIN_CASE_S = 1.0
_FENCE = "```"
_PYTHON_TAGS = ("python", "py", "python3")

Tests = Union[str, dict]


def extract_program(response: str) -> Optional[str]:
    """The program in the response (see the module docstring), or None."""
    text = extract_answer_tag(response)
    text = response if text is None else text
    # Fences pair up in order: 1st opens, 2nd closes, ... (str.find: linear in the response).
    fences, at = [], text.find(_FENCE)
    while at >= 0:
        fences.append(at)
        at = text.find(_FENCE, at + len(_FENCE))
    tagged, untagged = None, None
    for start, end in zip(fences[0::2], fences[1::2]):
        info, newline, body = text[start + len(_FENCE) : end].partition("\n")
        if not newline:
            continue  # ```inline``` on one line is not a block
        tag = info.strip().lower()
        if tag in _PYTHON_TAGS:
            tagged = body
        elif not tag:
            untagged = body
    program = tagged if tagged is not None else untagged
    return program if program and program.strip() else None


def parse_tests(ground_truth: Tests) -> Optional[Tests]:
    """A stdin/stdout dict, test code (str), or None when the ground truth holds no tests."""
    if isinstance(ground_truth, str) and ground_truth.lstrip().startswith("{"):
        try:
            ground_truth = json.loads(ground_truth)
        except json.JSONDecodeError:
            return None
    if isinstance(ground_truth, dict):
        inputs, outputs = ground_truth.get("inputs"), ground_truth.get("outputs")
        if not isinstance(inputs, list) or not isinstance(outputs, list):
            return None
        if not inputs or len(inputs) != len(outputs):
            return None
        if not all(isinstance(case, str) for case in inputs + outputs):
            return None
        return {"inputs": inputs, "outputs": outputs}
    if isinstance(ground_truth, str) and ground_truth.strip():
        return ground_truth
    return None


def _same_output(got: bytes, expected: str) -> bool:
    lines = got.decode("utf-8", errors="replace").rstrip().splitlines()
    return [line.rstrip() for line in lines] == [line.rstrip() for line in expected.rstrip().splitlines()]


def run_tests(
    program: str, tests: Tests, limits: Limits = Limits(), total_timeout_s: float = TOTAL_TIMEOUT_S
) -> Optional[float]:
    """Fraction of ``tests`` that ``program`` passes; None when ``tests`` holds no tests."""
    parsed = parse_tests(tests)
    if parsed is None:
        return None
    if isinstance(parsed, str):
        return float(run_python(program + "\n\n" + parsed + "\n", limits=limits).ok)
    deadline = time.monotonic() + total_timeout_s
    passed = 0
    for stdin, expected in zip(parsed["inputs"], parsed["outputs"]):
        remaining = deadline - time.monotonic()
        if remaining < _MIN_CASE_S:
            break  # out of time: the remaining cases fail
        case_limits = dataclasses.replace(limits, timeout_s=min(limits.timeout_s, remaining))
        result = run_python(program, stdin=stdin, limits=case_limits)
        passed += result.ok and _same_output(result.stdout, expected)
    return passed / len(parsed["inputs"])


def limits_from_extra(extra: dict) -> tuple[Limits, float]:
    """Limits, and the total timeout, with the sample's ``code_<limit>`` overrides applied."""
    overrides = {
        field.name: extra[f"code_{field.name}"]
        for field in dataclasses.fields(Limits)
        if f"code_{field.name}" in extra
    }
    total = extra.get("code_total_timeout_s", TOTAL_TIMEOUT_S)
    if not isinstance(total, (int, float)) or isinstance(total, bool) or not total > 0:
        raise ValueError(f"code_total_timeout_s={total!r}: must be a positive number")
    return Limits(**overrides), float(total)


def code_reward(response: Any, ground_truth: Any, extra: Any = None) -> Optional[float]:
    """Fraction of the ground truth's tests that the response's program passes (0.0 without a code block);
    None when the ground truth holds no tests or a ``code_*`` limit in ``extra`` is invalid.

    Not wrapped in :func:`~r1ray.rewards.base.reward_fn`, whose net turns every exception into None: a
    :class:`~r1ray.rewards.sandbox.SandboxError` must reach the executor and count as an error, so that
    a sandbox that cannot run anything here is reported, not taken for unscorable or wrong samples.
    """
    if not isinstance(response, str) or not isinstance(ground_truth, str):
        return None
    extra = extra if isinstance(extra, dict) else {}
    tests = parse_tests(ground_truth)
    if tests is None:
        logger.debug("code: no tests in the ground truth %.80r", ground_truth)
        return None
    try:
        limits, total_timeout_s = limits_from_extra(extra)
    except (TypeError, ValueError) as exc:
        logger.debug("code: bad limit in extra: %s", exc)
        return None
    program = extract_program(response)
    if program is None:
        return 0.0
    return run_tests(program, tests, limits, total_timeout_s)
