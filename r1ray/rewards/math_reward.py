"""Math accuracy reward via math-verify (LaTeX, ``\\boxed{}``, fractions, plain numbers).

The response's answer is the ``<answer>`` content if there is one, else the last ``\\boxed{}``; a
response with neither scores 0. (A fallback to the last number in the text could be gamed: "the answer
is 3/2" ends in the number 2. R1's rule-based accuracy reward likewise requires the answer in a stated
format.) An answer that offers several candidates ("3 or 5 or 7") scores 0 unless the ground truth is itself
several (:mod:`r1ray.rewards.hedge`). The ground truth may be a GSM8K solution ending in "#### 1,234" or a
plain answer.

Timeouts (docs/design.md §6): math-verify bounds parsing and comparison with ``signal.alarm``, which
works only on the main thread. The reward executor runs this on the main thread of a worker
process, so the alarm is armed there and a slow expression raises :class:`RewardTimeout` (counted as
a timeout, never scored 0). On any other thread the alarm is disabled and the executor's outer
per-sample kill is the only bound. math-verify's own "return False on timeout" path is never used:
it is always called with ``raise_on_error=True``.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, Optional

from r1ray.rewards.base import RewardTimeout, reward_fn
from r1ray.rewards.extract import extract_final_answer, gsm8k_ground_truth
from r1ray.rewards.hedge import hedged

logger = logging.getLogger(__name__)

# Seconds; math-verify takes whole seconds. Keep it below the executor's sample timeout so a slow
# expression is reported by the worker rather than by killing it.
MATH_VERIFY_TIMEOUT_S = 5
# A final answer longer than this is not a final answer; it is scored wrong without parsing, which
# also keeps sympy away from megabytes of text.
MAX_ANSWER_CHARS = 1000

_MATH_DELIMITERS = ("$", "\\(", "\\[", "\\boxed")
# A word of two or more letters that is not a LaTeX command ("\\frac", "\\in").
_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")


def _alarm_timeout() -> Optional[int]:
    """math-verify's timeout for this thread: armed on the main thread, disabled elsewhere."""
    if threading.current_thread() is threading.main_thread():
        return MATH_VERIFY_TIMEOUT_S
    return None


def _parse(text: str) -> list[Any]:
    """math-verify ``parse`` with timeouts surfaced as :class:`RewardTimeout`."""
    from math_verify import parse  # imported here: sympy takes ~1 s and most importers never score
    from math_verify.errors import TimeoutException

    try:
        return parse(text, parsing_timeout=_alarm_timeout(), raise_on_error=True)
    except TimeoutException as exc:
        raise RewardTimeout(f"math-verify parsing exceeded {MATH_VERIFY_TIMEOUT_S}s") from exc


def _parse_answer(text: str) -> list[Any]:
    """Parse an extracted answer (or a ground truth), which is either bare math or prose.

    math-verify reads delimited math (``$..$``, ``\\(..\\)``, ``\\boxed{}``) out of any text, but on
    undelimited text it takes the first plain number: "1+x^2" would parse as 1 and "(1, 2)" as 2.
    So bare math is parsed as if it were the inside of ``\\boxed{}``, and text with words in it
    ("18 dollars", "The answer is 42.") is parsed as it stands; each falls back to the other.
    A currency sign ("\\$18", or a lone "$18") is dropped first so it is not read as a delimiter.
    """
    text = text.replace("\\$", "")
    if text.count("$") == 1:
        text = text.replace("$", "")
    if any(delimiter in text for delimiter in _MATH_DELIMITERS):
        return _parse(text)
    boxed = "\\boxed{" + text + "}"
    first, second = (text, boxed) if _WORD_RE.search(text) else (boxed, text)
    return _parse(first) or _parse(second)


def parse_gold(ground_truth: str) -> Optional[list[Any]]:
    """Parsed ground truth, or None when it is empty or math-verify finds nothing in it."""
    text = gsm8k_ground_truth(ground_truth)
    if not text or len(text) > MAX_ANSWER_CHARS:
        return None
    return _parse_answer(text) or None


def answer_matches(answer: str, gold: list[Any]) -> bool:
    """Whether the extracted answer equals the parsed gold answer.

    Each (gold, prediction) pair is compared separately so that one pair that makes sympy raise
    does not hide another that compares fine; if every pair raises, the error propagates (the
    sample is unscorable, not wrong).
    """
    from math_verify import verify
    from math_verify.errors import TimeoutException

    if len(answer) > MAX_ANSWER_CHARS:
        return False
    predictions = _parse_answer(answer)
    errors: list[Exception] = []
    for gold_item in gold:
        for prediction in predictions:
            try:
                if verify(
                    gold_item, prediction, timeout_seconds=_alarm_timeout(), raise_on_error=True
                ):
                    return True
            except TimeoutException as exc:
                message = f"math-verify comparison exceeded {MATH_VERIFY_TIMEOUT_S}s"
                raise RewardTimeout(message) from exc
            except Exception as exc:  # noqa: BLE001 - sympy raises many kinds; see docstring
                errors.append(exc)
    if errors and len(errors) == len(gold) * len(predictions):
        raise errors[0]
    return False


def math_correct(response: str, ground_truth: str, number_fallback: bool = False) -> Optional[bool]:
    """Whether the response's final answer is right; None when the ground truth is unparseable."""
    gold = parse_gold(ground_truth)
    if gold is None:
        logger.debug("math: unparseable ground truth %.80r", ground_truth)
        return None
    answer = extract_final_answer(response, number_fallback=number_fallback)
    # hedged() last: it reads the whole response, answer_matches refuses an overlong answer at once.
    return answer is not None and answer_matches(answer, gold) and not hedged(response, answer, ground_truth)


@reward_fn
def math_reward(response: str, ground_truth: str, extra: dict) -> Optional[float]:
    """1.0 if the final answer (``<answer>`` or ``\\boxed{}``) is mathematically equal to the ground truth,
    else 0.0; None if the ground truth cannot be parsed."""
    correct = math_correct(response, ground_truth)
    return None if correct is None else float(correct)
