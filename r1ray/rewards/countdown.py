"""Countdown reward as in TinyZero (Pan et al. 2025): build the target from the given numbers.

Layout: ``ground_truth`` is the target as a string ("98") and ``extra["numbers"]`` the list of
ints. The verl/TinyZero layout, a JSON object ``{"target": 98, "numbers": [44, 19, 35]}`` as the
ground truth, is read too, so TinyZero data works without conversion.

The equation is the ``<answer>`` content, e.g. "(25 - 5) * 4" (a trailing "= 80" is allowed). It
must use every given number exactly once and evaluate to the target: 1.0. A well-formed equation
that is wrong (other numbers, other value, division by zero) gets TinyZero's format score 0.1;
anything else 0.0.

Safety: the equation is never passed to ``eval``. Only digits, ``+ - * / ( )`` and spaces are
allowed, the text is parsed with ``ast`` (which evaluates nothing) and only int literals and those
four operators are walked, with exact ``Fraction`` arithmetic. A ``**`` or ``//`` node is rejected
before anything is computed, and the length cap bounds the size of any product.
"""

from __future__ import annotations

import ast
import json
import logging
import operator
import re
from fractions import Fraction
from typing import Callable, Optional

from r1ray.rewards.base import reward_fn
from r1ray.rewards.extract import extract_answer_tag

logger = logging.getLogger(__name__)

CORRECT, FORMAT_ONLY, WRONG = 1.0, 0.1, 0.0
MAX_EQUATION_CHARS = 200

_ALLOWED_RE = re.compile(r"[\d+\-*/()\s]+")
_BINARY_OPS: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


class _NotAnEquation(ValueError):
    """The text is not an arithmetic expression over integer literals."""


def _evaluate(node: ast.AST, literals: list[int]) -> Fraction:
    """Exact value of a tree of int literals and + - * /; appends the literals to ``literals``."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        literals.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand, literals)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left, right = _evaluate(node.left, literals), _evaluate(node.right, literals)
        return _BINARY_OPS[type(node.op)](left, right)
    raise _NotAnEquation(type(node).__name__)


def parse_equation(text: str) -> Optional[ast.Expression]:
    """The parsed expression when ``text`` is a well-formed arithmetic equation, else None."""
    if "=" in text:
        text, _, _result = text.partition("=")
    text = text.strip()
    if not text or len(text) > MAX_EQUATION_CHARS or not _ALLOWED_RE.fullmatch(text):
        return None
    try:
        return ast.parse(text, mode="eval")
    except SyntaxError:
        return None


def read_task(ground_truth: str, extra: dict) -> Optional[tuple[int, list[int]]]:
    """(target, numbers) from ``ground_truth`` + ``extra["numbers"]`` or from TinyZero's JSON."""
    text = ground_truth.strip()
    if text.startswith("{"):
        task = json.loads(text)
        return int(task["target"]), [int(n) for n in task["numbers"]]
    numbers = extra.get("numbers")
    if not isinstance(numbers, (list, tuple)) or not text.lstrip("-").isdigit():
        return None
    return int(text), [int(n) for n in numbers]


@reward_fn
def countdown_reward(response: str, ground_truth: str, extra: dict) -> Optional[float]:
    """1.0 if the answer's equation uses each number once and hits the target, 0.1 if it is a
    well-formed but wrong equation, 0.0 otherwise; None if the task itself cannot be read."""
    task = read_task(ground_truth, extra)
    if task is None:
        logger.debug("countdown: no target/numbers in %.80r / %.80r", ground_truth, extra)
        return None
    target, numbers = task
    answer = extract_answer_tag(response)
    tree = None if answer is None else parse_equation(answer)
    if tree is None:
        return WRONG
    literals: list[int] = []
    try:
        value = _evaluate(tree.body, literals)
    except ZeroDivisionError:
        return FORMAT_ONLY
    except _NotAnEquation:
        return WRONG
    if sorted(literals) != sorted(numbers) or value != target:
        return FORMAT_ONLY
    return CORRECT
