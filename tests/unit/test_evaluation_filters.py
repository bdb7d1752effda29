"""R1 rejection-sampling filters on real strings."""

from __future__ import annotations

import random

import pytest

from r1ray.evaluation import (
    FilterStats,
    dedupe,
    filter_sft_rows,
    has_repetition_loop,
    is_mixed_language,
    is_unreadable,
)

ENGLISH = (
    "<think>First, the train covers 120 km in 2 hours, so its speed is 60 km/h. "
    "Wait, the question asks for minutes per km: 60 / 60 = 1 minute per km.</think><answer>1</answer>"
)
MIXED = (
    "<think>首先 we compute the speed: 120 / 2 = 60。所以 速度 是 60 km/h, "
    "然后 each km takes 1 minute.</think><answer>1</answer>"
)
CHINESE = "<think>首先计算速度：120 除以 2 等于 60，所以每公里需要一分钟。</think><answer>1</answer>"
LOOPING = (
    "<think>We need 17 * 23. 17 * 23 = 17 * 20 + 17 * 3 = 340 + 51. "
    + "So 340 + 51 = 391, let me recompute. " * 8
    + "</think>"
)


def test_is_mixed_language_uses_the_language_reward_share() -> None:
    assert not is_mixed_language(ENGLISH)
    assert is_mixed_language(MIXED)
    assert is_mixed_language(CHINESE)
    assert not is_mixed_language(CHINESE, target="zh")
    # No words at all: not mixed (is_unreadable judges it).
    assert not is_mixed_language("12 + 30 = 42")
    assert not is_mixed_language(MIXED, threshold=0.0)
    with pytest.raises(ValueError, match="not supported"):
        is_mixed_language(ENGLISH, target="fr")


def test_is_unreadable_on_real_strings() -> None:
    assert not is_unreadable(ENGLISH)
    assert not is_unreadable(CHINESE)  # another script is readable; mixing is a separate filter
    assert not is_unreadable(r"$\frac{a}{b} + \sqrt{x^2 + y^2} \leq \sum_{i=1}^{n} i$ holds since a, b > 0.")
    assert is_unreadable(LOOPING)
    assert is_unreadable("   \n ")
    assert is_unreadable("\ufffd\ufffd\x00\x01\x02 ok \ufffd\ufffd\ufffd\x03\x04")
    assert is_unreadable("🙂🙃😉 " * 10 + "fine")
    assert is_unreadable(" ".join(f"{i}+{i}={2 * i}," for i in range(60)))


def test_repetition_loop_thresholds() -> None:
    sentence = "Let me recompute 3 + 4. "  # 24 characters
    random.seed(0)
    prose = " ".join(random.choice("we add the two numbers then check it again".split()) for _ in range(4000))
    assert has_repetition_loop(prose[:5000] + sentence * 5 + prose[5000:])
    assert not has_repetition_loop(prose[:5000] + sentence * 4 + prose[5000:])
    assert has_repetition_loop("the " * 25)  # a short unit counts once it spans 20 characters
    assert not has_repetition_loop("the " * 24)
    paragraph = prose[:700]
    assert has_repetition_loop(prose[:300] + paragraph * 5)
    assert not has_repetition_loop(prose)


def test_dedupe_keeps_first_by_normalised_text() -> None:
    rows = [
        {"id": 0, "response": "The answer is 5."},
        {"id": 1, "response": "the  answer\nis 5. "},
        {"id": 2, "response": "THE ANSWER IS 5."},
        {"id": 3, "response": "The answer is 6."},
    ]
    assert [row["id"] for row in dedupe(rows, "response")] == [0, 3]
    assert dedupe(["a b", "A  B", "c"], key=lambda text: text) == ["a b", "c"]


def test_filter_sft_rows_counts_each_drop_reason() -> None:
    rows = [
        {"response": ENGLISH, "ok": True},
        {"response": ENGLISH.replace("First", "first"), "ok": True},  # duplicate up to case
        {"response": MIXED, "ok": True},
        {"response": LOOPING, "ok": True},
        {"response": ENGLISH + " extra", "ok": False},
        {"response": ENGLISH + " " + "and so on " * 100, "ok": True},  # overlong
    ]
    kept, stats = filter_sft_rows(rows, "response", correct=lambda row: row["ok"], max_length=600)
    assert kept == [rows[0]]
    assert stats == FilterStats(kept=1, incorrect=1, overlong=1, mixed_language=1, unreadable=1, duplicate=1)
    assert stats.dropped == 5 and stats.total == 6
    assert stats.as_metrics()["filter/duplicate"] == 1.0
    assert str(stats).startswith("kept 1 of 6 (dropped: incorrect 1, overlong 1")
    # With the language filter off and token lengths given, the mixed row survives.
    kept, stats = filter_sft_rows(rows[:3], lambda row: row["response"], language=None,
                                  max_length=10, length=lambda row: 5)
    assert kept == [rows[0], rows[2]] and stats.duplicate == 1


def test_filter_stats_rejects_unknown_reason() -> None:
    with pytest.raises(ValueError, match="unknown drop reason"):
        FilterStats().drop("too_short")
