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
        ("first \\boxed{3} then \\boxed{\\frac{2}{3}}", "2/3", 1.0),
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
