"""Reasoning-behaviour word rates on real sentences."""

from __future__ import annotations

import pytest

from r1ray.evaluation import DEFAULT_BEHAVIOUR_WORDS, behaviour_rates, count_behaviour_words

AHA = (
    "Let me compute 12 * 13 = 146. Wait, wait. That's an aha moment I can flag here. "
    "Let me re-examine: 12 * 13 = 156, so I made a mistake. Let me double-check by verifying 156 / 12 = 13."
)
PLAIN = "The sum of the first ten positive integers is 55, so the answer is 55."
CHECKER = "Checking the paycheck: the checksum checks out, and the result is incorrect."


def test_counts_follow_the_word_start_stem_rule() -> None:
    verification = DEFAULT_BEHAVIOUR_WORDS["verification"]
    # "double-check" is one occurrence, not two; "verifying" starts with "verify".
    assert count_behaviour_words(AHA, verification) == 2
    assert count_behaviour_words("A verification step.", verification) == 0
    # Checking, checksum, checks: stems at word starts; "paycheck" is not a word start.
    assert count_behaviour_words(CHECKER, verification) == 3
    # "incorrect" does not start with "correct".
    assert count_behaviour_words(CHECKER, DEFAULT_BEHAVIOUR_WORDS["correction"]) == 0
    assert count_behaviour_words("WAIT. Wait... waiting", ["wait"]) == 3


def test_behaviour_rates_on_real_responses() -> None:
    metrics = behaviour_rates([AHA, PLAIN])
    words = len(AHA.split()) + len(PLAIN.split())
    assert metrics["behaviour/reflection_rate"] == 0.5
    # "Wait", "wait", "re-examine".
    assert metrics["behaviour/reflection_per_1k_words"] == pytest.approx(1000 * 3 / words)
    assert metrics["behaviour/verification_rate"] == 0.5
    assert metrics["behaviour/verification_per_1k_words"] == pytest.approx(1000 * 2 / words)
    # "mistake".
    assert metrics["behaviour/correction_rate"] == 0.5
    assert set(metrics) == {
        f"behaviour/{name}_{kind}" for name in DEFAULT_BEHAVIOUR_WORDS for kind in ("rate", "per_1k_words")
    }


def test_behaviour_rates_custom_words_and_edge_cases() -> None:
    metrics = behaviour_rates(["Alternatively, try x = 2.", "Hmm.", ""], {"backtracking": ["alternatively"]})
    assert metrics == {
        "behaviour/backtracking_rate": pytest.approx(1 / 3),
        "behaviour/backtracking_per_1k_words": pytest.approx(1000 / 6),  # 5 + 1 + 0 words
    }
    assert behaviour_rates([]) == {}
    assert behaviour_rates([""])["behaviour/reflection_per_1k_words"] == 0.0
    with pytest.raises(ValueError, match="no words"):
        behaviour_rates(["text"], {"empty": []})
