"""Accuracy metrics over n sampled answers per prompt: pass@k, majority vote, per-source summaries.

- pass@k: the unbiased estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on
  Code", §2.1): with n samples of which c are correct, ``1 - C(n-c, k) / C(n, k)``.
- pass@1 as the DeepSeek-R1 report gives it (Guo et al. 2025, §3): the fraction of correct samples,
  averaged over prompts (equal to the estimator above at k=1).
- maj@n / cons@n (R1 report, Table 2): the most frequent final answer among the n samples counts.

All functions are pure and need no tokenizer or model: the caller supplies extracted answers,
correctness and response lengths (:class:`EvalGroup`).
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Optional, Sequence

from r1ray.rewards.extract import extract_final_answer as _raw_final_answer
from r1ray.rewards.extract import last_boxed

logger = logging.getLogger(__name__)

# "1,234,567" is one number; "(1,2)" and "1, 234" are not touched.
_THOUSANDS_COMMA_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_WHITESPACE_RE = re.compile(r"\s+")
# Math delimiters that wrap a whole answer and carry no meaning for voting.
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
# Spellings that render alike, after the MATH benchmark's strip_string (Hendrycks et al. 2021).
_SAME_RENDERING = (("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. 2021: the chance that at least one of k samples drawn
    without replacement from n (c of them correct) is correct.

    ``1 - C(n-c, k) / C(n, k)`` is computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, the product
    form of the Codex paper, which neither overflows nor loses precision for large n.

    Raises:
        ValueError: unless ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        # Every draw of k samples contains a correct one.
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def majority_vote(answers: Sequence[Optional[str]], correct: Sequence[bool]) -> bool:
    """maj@k / cons@k of the DeepSeek-R1 report: is the most frequent answer correct?

    The winner is the most frequent non-None answer, ties going to the answer seen first; it is
    correct iff any sample that gave it was judged correct (the grader may accept an answer that
    another sample spelled differently, so "any" rather than "the first"). No answer at all
    (every entry None) counts as wrong.

    Raises:
        ValueError: if ``answers`` and ``correct`` differ in length.
    """
    if len(answers) != len(correct):
        raise ValueError(f"majority_vote: {len(answers)} answers but {len(correct)} correctness flags")
    # Counter keeps insertion order and most_common() sorts stably, so ties go to the first seen.
    votes = Counter(answer for answer in answers if answer is not None)
    if not votes:
        return False
    winner = votes.most_common(1)[0][0]
    return any(ok for answer, ok in zip(answers, correct) if answer == winner)


def normalize_answer(answer: str) -> Optional[str]:
    """Voting key of an extracted answer: surrounding ``$``/``\\(``/``\\[`` delimiters and a
    trailing full stop removed, all whitespace removed (as MATH's strip_string does), thousands
    separators dropped ("1,234" -> "1234"), ``\\dfrac`` -> ``\\frac``; None when nothing is left."""
    text = answer.strip()
    previous = None
    # "$5$." and "\( 5. \)" both mean 5: peel full stops and delimiters until nothing changes.
    while text != previous:
        previous = text
        text = text.rstrip(".").strip()
        for left, right in _DELIMITERS:
            if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
                text = text[len(left) : len(text) - len(right)].strip()
                break
    for spelling, canonical in _SAME_RENDERING:
        text = text.replace(spelling, canonical)
    text = _WHITESPACE_RE.sub("", text)
    text = _THOUSANDS_COMMA_RE.sub("", text)
    return text or None


def extract_final_answer(response: str) -> Optional[str]:
    """The response's final answer, normalised for voting (:func:`normalize_answer`).

    The content of the last complete ``<answer>...</answer>``, else of the last ``\\boxed{...}``
    (nested braces kept), else None; both come from :mod:`r1ray.rewards.extract`, so evaluation
    reads answers exactly as the rewards do. A ``\\boxed{}`` inside the answer block is unwrapped,
    so "<answer>\\boxed{5}</answer>" and "\\boxed{5}" vote together.
    """
    answer = _raw_final_answer(response, number_fallback=False)
    if answer is None:
        return None
    boxed = last_boxed(answer)
    return normalize_answer(answer if boxed is None else boxed)


@dataclass(frozen=True)
class EvalGroup:
    """The n evaluated samples of one prompt; the three lists are aligned, one entry per sample."""

    data_source: str
    answers: list[Optional[str]]  # [n] extracted final answers (None: no answer), for voting
    correct: list[bool]  # [n] judged correct by the accuracy reward
    response_lengths: list[int]  # [n] response lengths in tokens

    def __post_init__(self) -> None:
        n = len(self.correct)
        if n == 0:
            raise ValueError(f"EvalGroup ({self.data_source!r}): no samples")
        if len(self.answers) != n or len(self.response_lengths) != n:
            raise ValueError(
                f"EvalGroup ({self.data_source!r}): {len(self.answers)} answers, {n} correctness flags and "
                f"{len(self.response_lengths)} lengths; give one of each per sample"
            )

    @property
    def n(self) -> int:
        return len(self.correct)


def metric_source_name(data_source: str) -> str:
    """A data source as it appears inside a metric name: '/' would add a level to the name."""
    return data_source.replace("/", "_") or "unknown"


def _summarize_one(groups: Sequence[EvalGroup], ks: Sequence[int], prefix: str) -> dict[str, float]:
    """Metrics of one set of groups, named ``{prefix}pass@1`` etc."""
    n_min = min(group.n for group in groups)
    metrics = {f"{prefix}pass@1": _mean([sum(g.correct) / g.n for g in groups])}
    for k in sorted(set(ks)):
        if k == 1:
            continue
        if k > n_min:
            logger.debug("%spass@%d skipped: a prompt has only %d samples", prefix, k, n_min)
            continue
        metrics[f"{prefix}pass@{k}"] = _mean([pass_at_k(g.n, sum(g.correct), k) for g in groups])
    # Vote over the first n_min samples of each prompt so the name maj@{n_min} says what was done.
    metrics[f"{prefix}maj@{n_min}"] = _mean(
        [float(majority_vote(g.answers[:n_min], g.correct[:n_min])) for g in groups]
    )
    lengths = [length for g in groups for length in g.response_lengths]
    metrics[f"{prefix}response_length/mean"] = _mean(lengths)
    return metrics


def _mean(values: Sequence[float]) -> float:
    return float(sum(values)) / len(values)


def summarize(groups: Sequence[EvalGroup], ks: Sequence[int]) -> dict[str, float]:
    """Evaluation metrics over all prompts and per data source.

    Returns ``eval/pass@1`` (mean over prompts of the fraction correct), ``eval/pass@{k}`` for
    each k in ``ks`` not above the smallest n, ``eval/maj@{n}`` (majority vote over n samples),
    ``eval/response_length/mean`` (over all samples), and the same per data source as
    ``eval/{source}/pass@1`` etc. ('/' in a source name becomes '_').

    Raises:
        ValueError: no groups, or a k below 1.
    """
    if not groups:
        raise ValueError("summarize: no evaluation groups (is the validation set empty?)")
    if any(k < 1 for k in ks):
        raise ValueError(f"summarize: every k must be >= 1, got {list(ks)}")
    metrics = _summarize_one(groups, ks, "eval/")
    by_source: dict[str, list[EvalGroup]] = defaultdict(list)
    for group in groups:
        by_source[metric_source_name(group.data_source)].append(group)
    for source in sorted(by_source):
        metrics.update(_summarize_one(by_source[source], ks, f"eval/{source}/"))
    return metrics
