"""Multi-digit arithmetic questions ("What is 37 + 85?") with the integer result as ground truth."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from r1ray.data.tasks.common import verl_row

DATA_SOURCE = "arithmetic"
OPERATIONS = "+-*/"


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def _question(rng: random.Random, digits: int, op: str) -> tuple[int, int, int]:
    """Operands and result of one question; division is built from its quotient, so it is exact."""
    a, b = _operand(rng, digits), _operand(rng, digits)
    if op == "+":
        return a, b, a + b
    if op == "-":
        return a, b, a - b
    if op == "*":
        return a, b, a * b
    return a * b, b, a


def generate(
    n: int,
    seed: int = 0,
    *,
    digits: int = 2,
    operations: str | Sequence[str] = "+-*",
    chat: bool = True,
) -> list[dict[str, Any]]:
    """``n`` questions ``a OP b`` with ``digits``-digit operands (division: ``digits``-digit divisor and quotient).

    Args:
        operations: any of "+", "-", "*", "/" (a string such as "+-" or a list).
        chat: prompt as one user message (True) or a plain string.
    """
    ops = list(operations)
    if digits < 1:
        raise ValueError(f"arithmetic: digits must be >= 1, got {digits}")
    if not ops or any(op not in OPERATIONS for op in ops):
        raise ValueError(f"arithmetic: operations must be drawn from {OPERATIONS!r}, got {operations!r}")
    rng = random.Random(seed)
    rows = []
    for index in range(n):
        op = rng.choice(ops)
        a, b, result = _question(rng, digits, op)
        expression = f"{a} {op} {b}"
        rows.append(verl_row(
            f"What is {expression}?",
            str(result),
            data_source=DATA_SOURCE,
            ability="math",
            extra_info={"expression": expression, "index": index},
            chat=chat,
        ))
    return rows
