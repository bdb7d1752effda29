"""The registry of reward functions, by name.

Names in :data:`REWARD_FUNCTIONS` are the shipped rewards. A name of the form
``"package.module:function"`` is imported instead, which is how a user (or a test) plugs in a
reward function of their own: a dotted path is importable by the reward worker processes too,
where a registration made at run time in the parent process would not exist. An imported function's
return value is checked (:func:`~r1ray.rewards.base.as_score`): a str, a list, NaN or inf makes the
sample an error that names the function and the value, never a score.
"""

from __future__ import annotations

import difflib
import importlib

from r1ray.rewards.arithmetic import arithmetic_reward
from r1ray.rewards.auto import auto_reward
from r1ray.rewards.base import RewardFn, checked
from r1ray.rewards.code_exec import code_reward
from r1ray.rewards.countdown import countdown_reward
from r1ray.rewards.format_reward import format_reward
from r1ray.rewards.knights_knaves import knights_knaves_reward
from r1ray.rewards.language import language_reward
from r1ray.rewards.math_reward import math_reward
from r1ray.rewards.simplerl import simplerl_reward
from r1ray.rewards.still3 import still3_action_reward, still3_length_reward

REWARD_FUNCTIONS: dict[str, RewardFn] = {
    "format": format_reward,
    "math": math_reward,
    "knights_knaves": knights_knaves_reward,
    "simplerl": simplerl_reward,
    "countdown": countdown_reward,
    "language": language_reward,
    "still3_length": still3_length_reward,
    "still3_action": still3_action_reward,
    "arithmetic": arithmetic_reward,
    "auto": auto_reward,
    "code": code_reward,
}

# The R1-Zero recipe: accuracy picked by data source, plus the format reward.
DEFAULT_REWARD_NAMES: tuple[str, ...] = ("auto", "format")


def reward_names() -> list[str]:
    """Names of the shipped reward functions, sorted."""
    return sorted(REWARD_FUNCTIONS)


def _import_reward(path: str) -> RewardFn:
    """Import ``"package.module:function"``; ValueError if it is not importable or not callable."""
    module_name, _, attribute = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import reward function {path!r}: {exc}") from exc
    if not callable(fn):
        raise ValueError(f"reward function {path!r} is not callable")
    return checked(fn)


def get_reward_fn(name: str) -> RewardFn:
    """The reward function registered as ``name``, or imported from ``"module:function"``.

    Raises:
        ValueError: unknown name (with the closest registered names) or a path that does not import.
    """
    if name in REWARD_FUNCTIONS:
        return REWARD_FUNCTIONS[name]
    if ":" in name:
        return _import_reward(name)
    close = difflib.get_close_matches(name, REWARD_FUNCTIONS, n=3)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown reward function {name!r}.{hint} Known: {', '.join(reward_names())}; "
        "or give 'package.module:function'."
    )
