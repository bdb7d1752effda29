"""pass@k, majority vote, answer extraction and summaries against hand-computed values."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from r1ray.evaluation import EvalGroup, extract_final_answer, majority_vote, pass_at_k, summarize


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (5, 2, 1, 0.4),  # 1 - C(3,1)/C(5,1) = 1 - 3/5
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 4, 1.0),  # only 3 wrong samples: any 4 contain a correct one
        (5, 0, 3, 0.0),
        (5, 5, 1, 1.0),
        (5, 5, 5, 1.0),
        (1, 1, 1, 1.0),
        (10, 1, 5, 0.5),  # 1 - C(9,5)/C(10,5) = 1 - 126/252
    ],
)
def test_pass_at_k_hand_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_exact_binomials_and_survives_large_n() -> None:
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)
    # C(2000, 1000) overflows a float; the product form does not.
    exact = 1 - Fraction(math.comb(1990, 1000), math.comb(2000, 1000))
    assert pass_at_k(2000, 10, 1000) == pytest.approx(float(exact), rel=1e-9)


@pytest.mark.parametrize("n, c, k", [(5, 2, 6), (5, 2, 0), (5, 6, 1), (5, -1, 1)])
def test_pass_at_k_rejects_bad_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_majority_vote_correct_and_wrong_majority() -> None:
    assert majority_vote(["4", "4", "5"], [True, True, False])
    assert not majority_vote(["5", "4", "5"], [False, True, False])


def test_majority_vote_tie_goes_to_first_seen_answer() -> None:
    assert majority_vote(["4", "5", "5", "4"], [True, False, False, True])
    assert not majority_vote(["5", "4", "4", "5"], [False, True, True, False])


def test_majority_vote_ignores_missing_answers() -> None:
    # Three samples without an answer do not outvote one answered sample.
    assert majority_vote([None, None, None, "7"], [False, False, False, True])
    assert not majority_vote([None, None], [False, False])
    assert not majority_vote([], [])


def test_majority_vote_counts_any_correct_sample_of_the_winner() -> None:
    assert majority_vote(["1/2", "1/2", "3"], [False, True, False])


def test_majority_vote_length_mismatch() -> None:
    with pytest.raises(ValueError, match="2 answers but 1"):
        majority_vote(["1", "2"], [True])


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>1+1</think><answer>2</answer>", "2"),
        ("<answer>3</answer> on second thought <answer> 4 </answer>", "4"),
        (r"so the result is \boxed{\frac{1}{\sqrt{2}}}.", r"\frac{1}{\sqrt{2}}"),
        (r"\boxed{1} then \boxed{x^{2}+1}", "x^{2}+1"),
        (r"<answer>The answer is \boxed{12}.</answer>", "12"),
        ("<answer>$1,234,567$</answer>", "1234567"),
        ("<answer>\\( x = 5 \\).</answer>", "x=5"),
        ("<answer>$$ 5. $$</answer>", "5"),
        (r"<answer>\dfrac{1}{2}</answer>", r"\frac{1}{2}"),
        ("<answer>(1,2)</answer>", "(1,2)"),
        ("the answer is 42", None),
        ("<answer>  $ $ </answer>", None),
        (r"truncated \boxed{3", None),
    ],
)
def test_extract_final_answer(response: str, expected: str | None) -> None:
    assert extract_final_answer(response) == expected


def test_extracted_answers_group_equal_votes() -> None:
    responses = ["<answer>1,000</answer>", r"\boxed{1000}", "<answer>$1000$.</answer>", "<answer>999</answer>"]
    answers = [extract_final_answer(r) for r in responses]
    assert answers == ["1000", "1000", "1000", "999"]


def _group(source: str, correct: list[bool], answers: list[str | None] | None = None) -> EvalGroup:
    answers = answers if answers is not None else [str(int(ok)) for ok in correct]
    return EvalGroup(source, answers, correct, [10 * (i + 1) for i in range(len(correct))])


def test_summarize_overall_and_per_source() -> None:
    groups = [
        _group("openai/gsm8k", [True, True, False, False]),  # c=2 of 4
        _group("openai/gsm8k", [False, False, False, False]),  # c=0
        _group("countdown", [True, False, False, False], ["7", "8", "8", None]),  # majority "8" is wrong
    ]
    metrics = summarize(groups, ks=[1, 2, 4, 8])
    # pass@1: (2/4 + 0 + 1/4) / 3; pass@2: (1 - C(2,2)/C(4,2) + 0 + 1 - C(3,2)/C(4,2)) / 3
    assert metrics["eval/pass@1"] == pytest.approx((0.5 + 0 + 0.25) / 3)
    assert metrics["eval/pass@2"] == pytest.approx(((1 - 1 / 6) + 0 + (1 - 3 / 6)) / 3)
    assert metrics["eval/pass@4"] == pytest.approx(2 / 3)
    assert "eval/pass@8" not in metrics  # only 4 samples per prompt
    # Group 1 ties "1" vs "0": "1" came first and is correct; group 2 all "0"; group 3 "8" wrong.
    assert metrics["eval/maj@4"] == pytest.approx(1 / 3)
    assert metrics["eval/response_length/mean"] == pytest.approx(25.0)
    assert metrics["eval/openai_gsm8k/pass@1"] == pytest.approx(0.25)
    assert metrics["eval/openai_gsm8k/pass@2"] == pytest.approx((1 - 1 / 6) / 2)
    assert metrics["eval/openai_gsm8k/maj@4"] == pytest.approx(0.5)
    assert metrics["eval/countdown/pass@1"] == pytest.approx(0.25)
    assert metrics["eval/countdown/maj@4"] == 0.0
    assert metrics["eval/countdown/response_length/mean"] == pytest.approx(25.0)
    assert not any(key.startswith("eval/openai/") for key in metrics)


def test_summarize_mixed_sample_counts_votes_over_the_smallest_n() -> None:
    groups = [_group("a", [True, True]), _group("a", [False, False, True, True], ["0", "0", "1", "1"])]
    metrics = summarize(groups, ks=[2, 3])
    assert "eval/maj@2" in metrics and "eval/pass@3" not in metrics
    # The second prompt's first two samples vote "0", which is wrong.
    assert metrics["eval/maj@2"] == pytest.approx(0.5)
    assert metrics["eval/pass@2"] == pytest.approx((1.0 + (1 - 1 / 6)) / 2)


def test_summarize_and_groups_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="no evaluation groups"):
        summarize([], ks=[1])
    with pytest.raises(ValueError, match="k must be >= 1"):
        summarize([_group("a", [True])], ks=[0])
    with pytest.raises(ValueError, match="one of each per sample"):
        EvalGroup("a", ["1"], [True, False], [1, 2])
