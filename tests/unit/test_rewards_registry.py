"""Registry, combination, in-process scoring, and robustness of every shipped reward function."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from r1ray.rewards import (
    DEFAULT_REWARD_NAMES,
    REWARD_FUNCTIONS,
    RewardItem,
    RewardSpec,
    combine_scores,
    get_reward_fn,
    reward_names,
    score_item,
)

# The helper is named by dotted path, as a user's own reward would be; make "tests" importable.
REPO_ROOT = str(Path(__file__).resolve().parents[2])
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
BEHAVE = "tests.unit.test_rewards_helpers:behave"

GARBAGE = [
    "",
    "\x00",
    "\x00<answer>\x00</answer>",
    "<think></think><answer></answer>",
    "<answer>" + "9" * 100_000 + "</answer>",
    "\\boxed{" + "9" * 100_000 + "}",
    "<answer>1e999999999</answer>",
    "\\boxed{\\frac{1}{0}}",
    "<answer>(((((1)))))</answer>",  # 20 levels take sympy ~3 s: timeouts
    "}{}{\\boxed{{{{",
    "\ud800",
    "<think>" * 1000 + "</answer>" * 1000,
]
GROUND_TRUTHS = ["", "\x00", "18", "#### 1,234", "Zoey is a knight", '{"target": 5}', "9" * 10_000]
EXTRAS = [{}, {"numbers": "not a list", "language": None, "data_source": 7}, {"numbers": [1, 2]}]


def test_names_and_defaults() -> None:
    assert reward_names() == sorted(REWARD_FUNCTIONS)
    for name in ("format", "math", "knights_knaves", "simplerl", "countdown", "language",
                 "still3_length", "still3_action", "arithmetic", "auto"):
        assert name in REWARD_FUNCTIONS
    assert set(DEFAULT_REWARD_NAMES) <= set(REWARD_FUNCTIONS)
    assert "still3_length" not in DEFAULT_REWARD_NAMES


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ValueError, match="Did you mean 'countdown'"):
        get_reward_fn("countdwn")
    with pytest.raises(ValueError, match="cannot import"):
        get_reward_fn("no_such_module_xyz:fn")
    assert get_reward_fn(BEHAVE)("ok", "", {}) == 1.0


@pytest.mark.parametrize("name", sorted(REWARD_FUNCTIONS))
def test_every_reward_returns_float_or_none_on_garbage(name: str) -> None:
    fn = get_reward_fn(name)
    for response in GARBAGE:
        for ground_truth in GROUND_TRUTHS:
            for extra in EXTRAS:
                score = fn(response, ground_truth, extra)
                assert score is None or isinstance(score, float), (response[:20], ground_truth)
    assert fn(None, "1", {}) is None  # type: ignore[arg-type]
    assert fn("1", None, None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(REWARD_FUNCTIONS))
def test_one_megabyte_responses_score_quickly(name: str) -> None:
    fn = get_reward_fn(name)
    fn("<answer>1</answer>", "1", {})  # load math-verify outside the timed part
    responses = [
        "<think>" + "Wait, 12 + 7 is 19. " * 50_000 + "</think><answer>19</answer>",
        "\\boxed{" * 200_000,
        "{" * 1_000_000,
        "你好" * 500_000,
        "<answer>" * 100_000 + "1" * 200_000,
    ]
    start = time.monotonic()
    for response in responses:
        fn(response, "19", {"numbers": [12, 7], "data_source": "gsm8k"})
    assert time.monotonic() - start < 10.0


def test_combine_scores() -> None:
    weights = {"auto": 1.0, "format": 0.5}
    assert combine_scores({"auto": 1.0, "format": 0.0}, weights) == 1.0
    assert combine_scores({"auto": 0.0, "format": 1.0}, weights) == 0.5
    assert combine_scores({"auto": None, "format": 1.0}, weights) is None
    with pytest.raises(ValueError, match="different reward functions"):
        combine_scores({"auto": 1.0}, weights)


def test_reward_spec_validation() -> None:
    spec = RewardSpec(names=["auto", "format"], weights=[1, 0.5])
    assert spec.names == ("auto", "format") and spec.weight_map == {"auto": 1.0, "format": 0.5}
    with pytest.raises(ValueError, match="Did you mean 'format'"):
        RewardSpec(names=["formt"], weights=[1.0])
    with pytest.raises(ValueError, match="one weight per reward"):
        RewardSpec(names=["format"], weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="repeats"):
        RewardSpec(names=["format", "format"], weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="num_workers"):
        RewardSpec(names=["format"], weights=[1.0], num_workers=0)
    with pytest.raises(ValueError, match="timeouts"):
        RewardSpec(names=["format"], weights=[1.0], sample_timeout_s=0)


@pytest.mark.parametrize(
    "response, status, score",
    [("ok", "ok", 1.0), ("none", "unscorable", None), ("raise", "error", None),
     ("timeout", "timeout", None)],
)
def test_score_item_statuses(response: str, status: str, score: float | None) -> None:
    result = score_item([BEHAVE, "format"], [1.0, 0.5], RewardItem(response, "", "gsm8k", {}))
    assert (result.status, result.score) == (status, score)
    assert set(result.components) == {BEHAVE, "format"}
    assert bool(result.error) == (status in ("error", "timeout"))


def test_score_item_passes_data_source_to_auto() -> None:
    item = RewardItem("<think>t</think><answer>18</answer>", "#### 18", "openai/gsm8k", {})
    result = score_item(["auto", "format"], [1.0, 0.5], item)
    assert (result.status, result.score) == ("ok", 1.5)
    assert result.components == {"auto": 1.0, "format": 1.0}
