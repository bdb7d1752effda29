"""Rejection-sampling filters for SFT data, after DeepSeek-R1 (Guo et al. 2025, §2.3.3).

R1 builds its second-stage SFT set by sampling from the RL checkpoint and keeping only correct
responses, after filtering out "chain-of-thought with mixed languages, long paragraphs, and code
blocks" and, for readability, responses that are hard to read. The report gives no thresholds;
the ones here are r1ray's choices, named as module constants and explained where they are set.

Everything is pure Python and linear-ish in the text length, so a few hundred thousand samples of
tens of kilobytes each filter on one CPU core.
"""

from __future__ import annotations

import logging
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass, fields
from typing import Callable, Iterable, Optional, TypeVar, Union

from r1ray.rewards.language import SUPPORTED_LANGUAGES, language_reward

logger = logging.getLogger(__name__)

T = TypeVar("T")
TextOf = Union[str, Callable[[T], str]]

# A degenerate loop: one chunk of at least 20 characters (a short sentence, or "the " x5) written 5
# times back to back. Sampled reasoning repeats a formula or a phrase 2-3 times legitimately; 5
# verbatim copies in a row is the decoding loop of a collapsed policy.
LOOP_MIN_UNIT_CHARS = 20
LOOP_MIN_REPEATS = 5
# Loops of whole paragraphs are found up to this unit length; longer units cost time and are rare.
LOOP_MAX_UNIT_CHARS = 2000
# More than half the characters being neither letters (any script, so Chinese is readable), digits,
# whitespace, punctuation nor math symbols: control bytes, emoji or box-drawing soup, mojibake.
MAX_OTHER_CHAR_SHARE = 0.5
# A long text (>= 200 non-space characters) with under 10% letters is a stream of digits and
# operators, not prose; LaTeX-heavy reasoning stays well above this (\frac, \cdot are letters).
MIN_LETTER_SHARE = 0.10
MIN_CHARS_FOR_LETTER_SHARE = 200

_ASCII_PUNCTUATION = frozenset(string.punctuation)


def is_mixed_language(text: str, target: str = "en", threshold: float = 0.9) -> bool:
    """Whether under ``threshold`` of the words are in the ``target`` language.

    Uses the word share of R1's language-consistency reward (:mod:`r1ray.rewards.language`), so
    the SFT filter and the RL reward agree; like the reward, it reads the ``<think>`` section when
    there is one. A text with no words is not mixed (:func:`is_unreadable` judges it).

    Raises:
        ValueError: a target language the reward does not support.
    """
    if target not in SUPPORTED_LANGUAGES:
        raise ValueError(f"is_mixed_language: target {target!r} not supported; use one of {SUPPORTED_LANGUAGES}")
    share = language_reward(text, "", {"language": target})
    return share is not None and share < threshold


def _is_readable_char(char: str) -> bool:
    if char.isalpha() or char.isdigit() or char.isspace() or char in _ASCII_PUNCTUATION:
        return True
    # Unicode punctuation (P*), combining marks of Indic and other scripts (M*), math symbols (Sm).
    category = unicodedata.category(char)
    return category[0] in "PM" or category == "Sm"


def _common_prefix_len(text: str, x: int, y: int, limit: int) -> int:
    """Largest r <= limit with text[x:x+r] == text[y:y+r] (x < y); slice compares run in C."""
    low, high = 0, max(0, min(limit, len(text) - y))
    while low < high:
        mid = (low + high + 1) // 2
        if text[x : x + mid] == text[y : y + mid]:
            low = mid
        else:
            high = mid - 1
    return low


def _common_suffix_len(text: str, x: int, y: int, limit: int) -> int:
    """Largest b <= limit with text[x-b:x] == text[y-b:y] (x < y)."""
    low, high = 0, max(0, min(limit, x))
    while low < high:
        mid = (low + high + 1) // 2
        if text[x - mid : x] == text[y - mid : y]:
            low = mid
        else:
            high = mid - 1
    return low


def has_repetition_loop(
    text: str,
    min_unit: int = LOOP_MIN_UNIT_CHARS,
    min_repeats: int = LOOP_MIN_REPEATS,
    max_unit: int = LOOP_MAX_UNIT_CHARS,
) -> bool:
    """Whether some chunk of ``min_unit`` to ``max_unit`` characters occurs ``min_repeats`` times
    back to back.

    A regex such as ``(.{20,}?)\\1{4,}`` backtracks quadratically (seconds on 30 kB). Instead: a
    loop of unit L spans 5L >= 100 characters, so it holds an anchor window text[a:a+min_unit] at
    a multiple of ``min_unit`` that recurs L characters later. Each recurrence at shift d (found by
    str.find within ``max_unit``) is tested by growing the stretch of period d around the anchor
    with C-speed slice compares; a stretch of period d and length >= min_repeats * q, q the
    smallest multiple of d that is >= min_unit, is the loop.
    """
    for anchor in range(0, len(text) - min_unit + 1, min_unit):
        window = text[anchor : anchor + min_unit]
        search_end = anchor + max_unit + min_unit
        found = text.find(window, anchor + 1, search_end)
        while found >= 0:
            shift = found - anchor
            unit = shift * -(-min_unit // shift)
            needed = min_repeats * unit
            ahead = _common_prefix_len(text, anchor, found, needed)
            behind = _common_suffix_len(text, anchor, found, needed)
            if behind + ahead + shift >= needed:
                return True
            found = text.find(window, found + 1, search_end)
    return False


def is_unreadable(text: str) -> bool:
    """Whether a response is unreadable, by cheap heuristics (thresholds are module constants):

    - empty or whitespace only;
    - more than ``MAX_OTHER_CHAR_SHARE`` of characters that are not letters (any script), digits,
      whitespace, punctuation or math symbols;
    - at least ``MIN_CHARS_FOR_LETTER_SHARE`` non-space characters of which under
      ``MIN_LETTER_SHARE`` are letters;
    - a repetition loop (:func:`has_repetition_loop`).

    Mixed languages are :func:`is_mixed_language`'s business, so Chinese text is readable here.
    """
    if not text.strip():
        return True
    # Classify each distinct character once: responses use a few hundred distinct characters.
    counts = Counter(text)
    other = sum(n for char, n in counts.items() if not _is_readable_char(char))
    if other > MAX_OTHER_CHAR_SHARE * len(text):
        return True
    visible = sum(n for char, n in counts.items() if not char.isspace())
    letters = sum(n for char, n in counts.items() if char.isalpha())
    if visible >= MIN_CHARS_FOR_LETTER_SHARE and letters < MIN_LETTER_SHARE * visible:
        return True
    return has_repetition_loop(text)


def normalize_text(text: str) -> str:
    """Duplicate-detection key: whitespace runs collapsed to one space, case folded."""
    return " ".join(text.split()).casefold()


def _text_getter(key: TextOf) -> Callable[[T], str]:
    if isinstance(key, str):
        return lambda row: row[key]  # type: ignore[index]
    return key


def dedupe(rows: Iterable[T], key: TextOf) -> list[T]:
    """Rows with the first occurrence of each text kept, texts compared after
    :func:`normalize_text`. ``key`` is a column name (rows are dicts) or a function row -> text."""
    text_of = _text_getter(key)
    seen: set[str] = set()
    kept: list[T] = []
    for row in rows:
        normalized = normalize_text(text_of(row))
        if normalized not in seen:
            seen.add(normalized)
            kept.append(row)
    return kept


@dataclass
class FilterStats:
    """How many rows were kept, and how many dropped for each reason (the first that applied)."""

    kept: int = 0
    incorrect: int = 0
    overlong: int = 0
    mixed_language: int = 0
    unreadable: int = 0
    duplicate: int = 0

    @staticmethod
    def reasons() -> tuple[str, ...]:
        return tuple(f.name for f in fields(FilterStats) if f.name != "kept")

    def drop(self, reason: str) -> None:
        if reason not in self.reasons():
            raise ValueError(f"FilterStats: unknown drop reason {reason!r}; one of {self.reasons()}")
        setattr(self, reason, getattr(self, reason) + 1)

    def add(self, other: "FilterStats") -> None:
        """Accumulate another batch's counts (rejection sampling filters prompt by prompt)."""
        for f in fields(FilterStats):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    @property
    def dropped(self) -> int:
        return sum(getattr(self, reason) for reason in self.reasons())

    @property
    def total(self) -> int:
        return self.kept + self.dropped

    def as_metrics(self, prefix: str = "filter/") -> dict[str, float]:
        """Counts as tracker metrics: ``filter/kept``, ``filter/dropped``, ``filter/<reason>``."""
        counts = {"kept": self.kept, "dropped": self.dropped}
        counts.update({reason: getattr(self, reason) for reason in self.reasons()})
        return {f"{prefix}{name}": float(count) for name, count in counts.items()}

    def __str__(self) -> str:
        reasons = ", ".join(f"{r} {getattr(self, r)}" for r in self.reasons() if getattr(self, r))
        return f"kept {self.kept} of {self.total}" + (f" (dropped: {reasons})" if reasons else "")


def _drop_reason(
    row: T,
    text: str,
    *,
    correct: Optional[Callable[[T], bool]],
    length: Optional[int],
    max_length: Optional[int],
    language: Optional[str],
    language_threshold: float,
) -> Optional[str]:
    """The first filter a row fails, cheapest checks first; None if it passes them all."""
    if correct is not None and not correct(row):
        return "incorrect"
    if max_length is not None and length is not None and length > max_length:
        return "overlong"
    if language is not None and is_mixed_language(text, language, language_threshold):
        return "mixed_language"
    if is_unreadable(text):
        return "unreadable"
    return None


def filter_sft_rows(
    rows: Iterable[T],
    text: TextOf,
    *,
    correct: Optional[Callable[[T], bool]] = None,
    max_length: Optional[int] = None,
    length: Optional[Callable[[T], int]] = None,
    language: Optional[str] = "en",
    language_threshold: float = 0.9,
) -> tuple[list[T], FilterStats]:
    """R1-style rejection sampling: keep rows that are correct, not over ``max_length``, in one
    language, readable, and not duplicates of an earlier kept row.

    Args:
        rows: candidate SFT rows (for example dicts of prompt, response, ...).
        text: the column holding the response, or a function row -> response.
        correct: row -> judged correct; None when the rows are already verified.
        max_length: longest allowed response, in the unit of ``length`` (None: no limit).
        length: row -> response length (tokens, say); default the number of characters.
        language: target language of :func:`is_mixed_language`; None skips that filter.
        language_threshold: minimum share of words in ``language``.

    Returns:
        The kept rows in input order, and why the others were dropped.
    """
    text_of = _text_getter(text)
    stats = FilterStats()
    seen: set[str] = set()
    kept: list[T] = []
    for row in rows:
        response = text_of(row)
        size = None if max_length is None else (length(row) if length is not None else len(response))
        reason = _drop_reason(row, response, correct=correct, length=size, max_length=max_length,
                              language=language, language_threshold=language_threshold)
        normalized = normalize_text(response) if reason is None else ""
        if reason is None and normalized in seen:
            reason = "duplicate"
        if reason is not None:
            stats.drop(reason)
            continue
        seen.add(normalized)
        kept.append(row)
        stats.kept += 1
    logger.info("SFT filter: %s", stats)
    return kept, stats
