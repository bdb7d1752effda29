"""Knights-and-knaves reward of Logic-RL (Xie et al. 2025, "Logic-RL", §3.2).

total = format score + answer score:

- format: +1 if the response has the R1 think/answer layout (see ``format_reward``), else -1;
- answer: +2 if every person's role is right, -1.5 if the answer is parseable but wrong, -2 if it is
  unparseable or missing. As in Logic-RL, a malformed response is not read at all (answer -2), so
  the four outcomes are 3, -0.5, -1 and -3.

Ground truth: "Zoey is a knight, Oliver is a knave" (any separator; Logic-RL's "(1) Zoey is a
knave\\n(2) Oliver is a knight" works too). The answer may say "Zoey is a knight", "(1) Zoey is a
knight" or "Zoey: knight". Logic-RL's anti-hedging rule is kept: the answer must mention exactly as
many roles as there are people, and each person must get exactly one role.
``extra["think_prefilled"]`` is honoured as in ``format_reward``.
"""

from __future__ import annotations

import logging
import re
from typing import Optional

from r1ray.rewards.base import reward_fn
from r1ray.rewards.extract import split_think_answer

logger = logging.getLogger(__name__)

FORMAT_OK, FORMAT_BAD = 1.0, -1.0
ANSWER_CORRECT, ANSWER_WRONG, ANSWER_UNPARSEABLE = 2.0, -1.5, -2.0

_ASSIGN = r"\s*(?:\bis\s+(?:an?\s+)?|[:=\-]\s*)\b(knight|knave)\b"
_GOLD_RE = re.compile(r"\b([A-Za-z][A-Za-z'\-]*)" + _ASSIGN, re.IGNORECASE)
_ROLE_WORD_RE = re.compile(r"knight|knave", re.IGNORECASE)


def parse_ground_truth(ground_truth: str) -> Optional[dict[str, str]]:
    """Lower-cased name -> "knight" | "knave", or None if no role is found or a name gets two."""
    roles: dict[str, str] = {}
    for match in _GOLD_RE.finditer(ground_truth):
        name, role = match.group(1).lower(), match.group(2).lower()
        if roles.setdefault(name, role) != role:
            return None
    return roles or None


def parse_answer(answer: str, names: list[str]) -> Optional[dict[str, str]]:
    """The role the answer gives each of ``names``, or None if any is missing or ambiguous."""
    if len(_ROLE_WORD_RE.findall(answer)) != len(names):
        return None
    roles: dict[str, str] = {}
    for name in names:
        found = {
            role.lower()
            for role in re.findall(r"\b" + re.escape(name) + r"\b" + _ASSIGN, answer, re.IGNORECASE)
        }
        if len(found) != 1:
            return None
        roles[name] = found.pop()
    return roles


@reward_fn
def knights_knaves_reward(response: str, ground_truth: str, extra: dict) -> Optional[float]:
    """Logic-RL score in {3, -0.5, -1, -3}; None if the ground truth has no parseable roles."""
    gold = parse_ground_truth(ground_truth)
    if gold is None:
        logger.debug("knights_knaves: unparseable ground truth %.80r", ground_truth)
        return None
    layout = split_think_answer(response, think_prefilled=bool(extra.get("think_prefilled")))
    if layout is None:
        return FORMAT_BAD + ANSWER_UNPARSEABLE
    predicted = parse_answer(layout[1], list(gold))
    if predicted is None:
        return FORMAT_OK + ANSWER_UNPARSEABLE
    return FORMAT_OK + (ANSWER_CORRECT if predicted == gold else ANSWER_WRONG)
