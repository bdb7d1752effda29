"""Format, knights-and-knaves, countdown, language, STILL-3 and auto rewards on real strings."""

from __future__ import annotations

import json

import pytest

from r1ray.rewards import count_reflection_words, get_reward_fn

format_reward = get_reward_fn("format")
kk = get_reward_fn("knights_knaves")
countdown = get_reward_fn("countdown")
language = get_reward_fn("language")
still3_length = get_reward_fn("still3_length")
still3_action = get_reward_fn("still3_action")
auto = get_reward_fn("auto")


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>2+2=4</think><answer>4</answer>", 1.0),
        ("  <think>\nreason\n</think>\n\n<answer> 4 </answer>\n", 1.0),
        ("<think>reason</think><answer>4", 0.0),  # missing close tag
        ("<think>reason<answer>4</answer>", 0.0),
        ("<think>a</think><answer>1</answer><answer>2</answer>", 0.0),  # two answer tags
        ("<answer>4</answer><think>reason</think>", 0.0),  # answer before think
        ("<think>a</think> so <answer>4</answer>", 0.0),  # text between the blocks
        ("Sure! <think>a</think><answer>4</answer>", 0.0),  # text before
        ("<think>a</think><answer>4</answer> done", 0.0),  # text after
        ("<think> </think><answer>4</answer>", 0.0),  # empty reasoning
        ("<think>a</think><answer></answer>", 0.0),  # empty answer
        ("reason</think><answer>4</answer>", 0.0),  # prefilled <think>, but not declared
        ("", 0.0),
    ],
)
def test_format(response: str, expected: float) -> None:
    assert format_reward(response, "", {}) == expected


def test_format_with_prefilled_think() -> None:
    extra = {"think_prefilled": True}
    assert format_reward("reason</think><answer>4</answer>", "", extra) == 1.0
    assert format_reward("<think>reason</think><answer>4</answer>", "", extra) == 1.0
    assert format_reward("reason<answer>4</answer>", "", extra) == 0.0


KK_TRUTH = "Zoey is a knight, Oliver is a knave"


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("(1) Zoey is a knight\n(2) Oliver is a knave", 3.0),
        ("Zoey: knight, Oliver: knave", 3.0),
        ("oliver is a knave and zoey is a knight.", 3.0),
        ("(1) Zoey is a knave\n(2) Oliver is a knave", -0.5),
        ("Zoey is a knight", -1.0),  # Oliver missing
        ("Zoey is a knight or a knave, Oliver is a knave", -1.0),  # hedging
        ("I cannot tell", -1.0),
    ],
)
def test_knights_knaves(answer: str, expected: float) -> None:
    response = f"<think>If Zoey lies then...</think>\n<answer>{answer}</answer>"
    assert kk(response, KK_TRUTH, {}) == expected


def test_knights_knaves_malformed_response_is_not_read() -> None:
    response = "<answer>(1) Zoey is a knight (2) Oliver is a knave</answer>"
    assert kk(response, KK_TRUTH, {}) == -3.0


def test_knights_knaves_logic_rl_ground_truth_layout() -> None:
    truth = "(1) Zoey is a knave\n(2) Oliver is a knight"
    response = "<think>t</think><answer>Zoey is a knave, Oliver is a knight</answer>"
    assert kk(response, truth, {}) == 3.0
    assert kk(response, "nobody here", {}) is None


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("(25 - 5) * 4", 1.0),
        ("4 * (25 - 5) = 80", 1.0),
        ("(25 + 5) * 4", 0.1),  # wrong value
        ("(25 - 4) * 5", 0.1),  # right numbers, wrong value
        ("(25 - 5) * 4 * 1", 0.1),  # a number not given
        ("80", 0.1),  # numbers not used
        ("(25 - 5) / (4 - 4)", 0.1),  # division by zero
        ("25 ** 5 ** 4", 0.0),  # power is not allowed
        ("__import__('os').system('echo pwned')", 0.0),
        ("(lambda: 80)()", 0.0),
        ("(25 - 5) * 4 +", 0.0),
        ("", 0.0),
    ],
)
def test_countdown(answer: str, expected: float) -> None:
    response = f"<think>try things</think><answer>{answer}</answer>"
    assert countdown(response, "80", {"numbers": [25, 5, 4]}) == expected


def test_countdown_tinyzero_json_ground_truth_and_missing_task() -> None:
    truth = json.dumps({"target": 80, "numbers": [25, 5, 4]})
    assert countdown("<answer>(25 - 5) * 4</answer>", truth, {}) == 1.0
    assert countdown("(25 - 5) * 4", truth, {}) == 0.0  # no answer tag
    assert countdown("<answer>(25 - 5) * 4</answer>", "80", {}) is None  # no numbers


def test_language_english_and_chinese() -> None:
    english = "<think>First add the numbers, then check the sum.</think><answer>4</answer>"
    mixed = "<think>First 我们 add the numbers 然后 check.</think><answer>4</answer>"
    assert language(english, "", {}) == 1.0
    assert language(english, "", {"language": "zh"}) == 0.0
    # tokens: First, 我, 们, add, the, numbers, 然, 后, check -> 5 English out of 9
    assert language(mixed, "", {}) == pytest.approx(5 / 9)
    assert language(mixed, "", {"language": "zh"}) == pytest.approx(4 / 9)
    assert language("<think>先计算</think>", "", {"language": "zh-CN"}) == 1.0
    assert language("no tags at all, pure English", "", {}) == 1.0


def test_language_unscorable_cases() -> None:
    assert language("<think>1 + 2 = 3</think>", "", {}) is None
    assert language("", "", {}) is None
    assert language("hello", "", {"language": "fr"}) is None


def test_still3_length_uses_correctness_and_length() -> None:
    extra = {"max_response_length": 100}
    assert still3_length("x", "", {**extra, "correct": True, "response_length": 50}) == 0.25
    assert still3_length("x", "", {**extra, "correct": False, "response_length": 500}) == -0.5
    assert still3_length("<answer>7</answer>" + " " * 382, "7", extra) == 0.5  # 400 chars ~ 100 tok
    assert still3_length("<answer>7</answer>", "8", extra) < 0
    assert still3_length("<answer>7</answer>", "", extra) is None


def test_still3_action_bonus_is_capped() -> None:
    assert still3_action("<think>Wait, let me verify.</think><answer>1</answer>", "", {}) == 0.04
    assert still3_action("<think>" + "check " * 100 + "</think>", "", {}) == 0.1
    assert still3_action("plain text", "", {}) == 0.0
    assert count_reflection_words("Double-check it; waiting is not wait") == 2


@pytest.mark.parametrize(
    "data_source, response, ground_truth, extra, expected",
    [
        ("openai/gsm8k", "<answer>18</answer>", "#### 18", {}, 1.0),
        ("MATH", "\\boxed{\\frac12}", "0.5", {}, 1.0),
        ("countdown", "<answer>2 + 3</answer>", "5", {"numbers": [2, 3]}, 1.0),
        ("kk", "<think>t</think><answer>Zoey is a knight</answer>", "Zoey is a knight", {}, 3.0),
        ("arithmetic", "<answer>12</answer>", "12", {}, 1.0),
        ("some/unknown_set", "<answer>12</answer>", "12", {}, None),
        ("", "<answer>12</answer>", "12", {}, None),
    ],
)
def test_auto_picks_the_reward_by_data_source(
    data_source: str, response: str, ground_truth: str, extra: dict, expected: float | None
) -> None:
    assert auto(response, ground_truth, {**extra, "data_source": data_source}) == expected

