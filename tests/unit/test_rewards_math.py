"""Math-flavoured rewards on real strings: math, simplerl, arithmetic, and GSM8K answers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from r1ray.rewards import RewardTimeout, get_reward_fn

DATA = Path(__file__).resolve().parents[1] / "data"

math_reward = get_reward_fn("math")
simplerl = get_reward_fn("simplerl")
arithmetic = get_reward_fn("arithmetic")


@pytest.mark.parametrize(
    "response, ground_truth, expected",
    [
        ("<think>16-3-4=9, 9*2=18</think><answer>18</answer>", "#### 18", 1.0),
        ("<think>...</think><answer>17</answer>", "#### 18", 0.0),
        ("So the answer is \\boxed{\\frac{1}{2}}.", "0.5", 1.0),
        ("So the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", 1.0),
        ("<answer>0.5</answer>", "\\frac{1}{2}", 1.0),
        ("<answer>\\frac12</answer>", "\\dfrac{1}{2}", 1.0),
        ("<answer>$\\frac{\\sqrt{3}}{2}$</answer>", "\\frac{\\sqrt3}{2}", 1.0),
        # Two different boxed answers: a hedge (r1ray.rewards.hedge), not "the last box wins".
        ("first \\boxed{3} then \\boxed{\\frac{2}{3}}", "2/3", 0.0),
        ("first \\boxed{\\frac{2}{3}}, checked: \\boxed{\\frac{2}{3}}", "2/3", 1.0),
        # No <answer> and no \\boxed{}: not an answer, whatever numbers the text ends with.
        ("The total is 1,234 dollars.", "Adding up...\n#### 1,234", 0.0),
        ("the answer is 3/2", "2", 0.0),
        ("the answer is 2", "2", 0.0),
        ("<answer>3/2</answer>", "2", 0.0),
        ("<answer>3/2</answer>", "1.5", 1.0),
        ("<answer>1234</answer>", "#### 1,234", 1.0),
        ("no answer here at all", "#### 18", 0.0),
        ("<answer>\\boxed{x^2+1}</answer>", "1+x^2", 1.0),
        ("<answer>1+x^2</answer>", "x^2+1", 1.0),
        ("<answer>1</answer>", "x^2+1", 0.0),
        ("<answer>(1, 2)</answer>", "(1,2)", 1.0),
        ("<answer>2</answer>", "(1,2)", 0.0),
        ("<answer>18 dollars</answer>", "#### 18", 1.0),
        ("<answer>\\$18</answer>", "#### 18", 1.0),
        ("<answer>The answer is $x=3$.</answer>", "3", 1.0),
        ("<answer>" + "9" * 5000 + "</answer>", "9", 0.0),
    ],
)
def test_math_reward(response: str, ground_truth: str, expected: float) -> None:
    assert math_reward(response, ground_truth, {}) == expected


def test_math_answer_tag_wins_over_boxed_and_numbers() -> None:
    response = "<think>maybe \\boxed{7}, or 12</think><answer>5</answer> and 99"
    assert math_reward(response, "5", {}) == 1.0
    assert math_reward(response, "7", {}) == 0.0


def test_nested_boxed_with_truncated_trailing_box() -> None:
    response = "We get \\boxed{\\frac{1}{\\sqrt{4}}}. Double-check: \\boxed{\\frac{1"
    assert math_reward(response, "1/2", {}) == 1.0


@pytest.mark.parametrize("ground_truth", ["", "   ", "####", "#### ", "\\boxed{}"])
def test_unparseable_ground_truth_is_unscorable(ground_truth: str) -> None:
    assert math_reward("<answer>1</answer>", ground_truth, {}) is None
    assert simplerl("<answer>1</answer>", ground_truth, {}) is None


def test_math_verify_timeout_is_reported_not_scored_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    import math_verify
    from math_verify.errors import TimeoutException

    def slow_parse(*args: object, **kwargs: object) -> list:
        raise TimeoutException("Operation timed out!")

    monkeypatch.setattr(math_verify, "parse", slow_parse)
    with pytest.raises(RewardTimeout):
        math_reward("<answer>1</answer>", "1", {})


def test_math_reward_off_the_main_thread() -> None:
    # signal.alarm is unusable here, so the internal timeout must be disabled rather than raise.
    out: list = []
    thread = threading.Thread(target=lambda: out.append(math_reward("\\boxed{18}", "#### 18", {})))
    thread.start()
    thread.join(60)
    assert out == [1.0]


def test_gsm8k_sample_answers_score_one_against_their_own_ground_truth() -> None:
    rows = [json.loads(line) for line in (DATA / "gsm8k_sample.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    for row in rows:
        solution = row["answer"]
        final = solution.rsplit("####", 1)[1].strip()
        assert math_reward(f"<answer>{final}</answer>", solution, {}) == 1.0, final
        assert math_reward(f"<answer>{solution}</answer>", solution, {}) == 1.0, final
        assert math_reward("<answer>-1</answer>", solution, {}) == 0.0, final


# Answers that offer several candidates, each with the right one among them: 0 from every accuracy reward.
HEDGES = [
    "3 or 5 or 7",
    "7 or 3",
    "-7 or 7",
    "either 3 or 7",
    "3 and 7",
    "7 (or 8)",
    "3, 5, 7",
    "3; 7",
    "The answer is 3, 5, or 7.",
    "x = 3 or x = 7",
    "3 \\text{ or } 7",
    "$3 \\text{ or } 7$",
    "$3$ or $7$",
    "3 \\lor 7",
    "3 \\vee 7",
    "3 | 7",
    "\\boxed{3} or \\boxed{7}",
    "\\boxed{3}\\boxed{7}",
    "\\boxed{\\boxed{3} or \\boxed{7}}",
    "3 or 5 or 7 (I guess 7)",
]


@pytest.mark.parametrize("answer", HEDGES)
def test_a_hedged_answer_scores_nothing(answer: str) -> None:
    response = f"<think>it is one of these</think><answer>{answer}</answer>"
    assert math_reward(response, "7", {}) == 0.0
    assert arithmetic(response, "7", {}) == 0.0
    assert simplerl(response, "7", {}) == -0.5          # an answer, and a wrong one


@pytest.mark.parametrize("response", ["I get \\boxed{3}, or maybe \\boxed{7}", "\\boxed{3}\n\\boxed{5}\n\\boxed{7}"])
def test_several_boxed_answers_without_a_tag_are_a_hedge(response: str) -> None:
    assert math_reward(response, "7", {}) == 0.0
    assert arithmetic(response, "7", {}) == 0.0


# One answer in many spellings (math-verify's equivalences), and answers whose ground truth is itself
# several values: 1.0 each.
@pytest.mark.parametrize(
    "answer, ground_truth",
    [
        ("7", "7"),
        ("7.0", "7"),
        ("$7$", "7"),
        ("\\boxed{7}", "7"),
        ("\\boxed{\\boxed{7}}", "7"),
        ("x = 7", "7"),
        ("7 apples", "7"),
        ("7 \\,\\text{cm}", "7"),
        ("7 or more", "7"),
        ("x = 7, I think", "7"),
        ("The answer is 7 and it is prime", "7"),
        ("7 and 7", "7"),
        ("-7", "-7"),
        ("1,000", "1000"),
        ("1,234.5", "1234.5"),
        ("\\frac{1}{2}", "0.5"),
        ("3/4", "0.75"),
        ("2\\sqrt{3}", "2\\sqrt{3}"),
        ("7%", "7%"),
        ("(1, 2)", "(1,2)"),
        ("[1, 2)", "[1,2)"),
        ("1, 2", "1, 2"),
        ("2, 1", "1, 2"),
        ("\\{1, 2\\}", "{1,2}"),
        ("x=1, y=2", "x=1, y=2"),
        ("\\pm 3", "\\pm 3"),
    ],
)
def test_one_answer_and_answers_to_a_set_still_score(answer: str, ground_truth: str) -> None:
    assert math_reward(f"<answer>{answer}</answer>", ground_truth, {}) == 1.0


def test_a_set_answer_must_be_the_set() -> None:
    assert math_reward("<answer>1, 2, 3</answer>", "1, 2", {}) == 0.0
    assert math_reward("<answer>1</answer>", "1, 2", {}) == 0.0


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>hm</think><answer>\\boxed{\\frac{1}{2}}</answer>", 1.0),
        ("the result is \\boxed{0.5}", 1.0),
        ("the result is \\boxed{3}", -0.5),
        ("<answer>three</answer>", -0.5),
        ("the result is 0.5", -1.0),
        ("", -1.0),
    ],
)
def test_simplerl(response: str, expected: float) -> None:
    assert simplerl(response, "\\frac{1}{2}", {}) == expected


@pytest.mark.parametrize(
    "response, ground_truth, expected",
    [
        ("<answer>42</answer>", "42", 1.0),
        ("<answer>= 42.</answer>", "42", 1.0),
        ("<answer>42.0</answer>", "42", 1.0),
        ("<answer>1,234</answer>", "1234", 1.0),
        ("<answer>-7</answer>", "-7", 1.0),
        ("<answer>3 + 4 = 7</answer>", "7", 1.0),
        ("<answer>7 apples</answer>", "7", 1.0),
        ("<answer>3/7</answer>", "7", 0.0),  # one fraction, not the integer 7
        ("<answer>3 7</answer>", "7", 0.0),
        ("\\boxed{42} and later 7", "42", 1.0),
        ("so 3 + 4 = 7", "7", 0.0),  # no answer tag or box: the format is part of the answer
        ("<think>3 + 4 = 7</answer></answer>", "7", 0.0),
        ("<answer>42.5</answer>", "42", 0.0),
        ("<answer>41</answer>", "42", 0.0),
        ("nothing", "42", 0.0),
        ("<answer>" + "1" * 5000 + "</answer>", "42", 0.0),
    ],
)
def test_arithmetic(response: str, ground_truth: str, expected: float) -> None:
    assert arithmetic(response, ground_truth, {}) == expected


@pytest.mark.parametrize("ground_truth", ["forty-two", "4.5", ""])
def test_arithmetic_non_integer_ground_truth_is_unscorable(ground_truth: str) -> None:
    assert arithmetic("<answer>42</answer>", ground_truth, {}) is None
