"""Countdown: combine the given numbers with + - * / to reach a target (the TinyZero task).

Each puzzle is built backwards from a random expression that uses every number exactly once, with
positive integer intermediate results, so a solution always exists; it is kept in
``extra_info["solution"]``. Reward convention: ground truth is the target as a string and
``extra_info["numbers"]`` the list of usable numbers.
"""

from __future__ import annotations

import random
from typing import Any

from r1ray.data.tasks.common import verl_row

DATA_SOURCE = "countdown"
_MAX_ATTEMPTS = 10_000

Term = tuple[int, str]  # (value, expression text)


def _candidates(a: Term, b: Term) -> list[Term]:
    """Every way to combine two terms that keeps the result a positive integer."""
    (va, ea), (vb, eb) = a, b
    out = [(va + vb, f"({ea} + {eb})"), (va * vb, f"({ea} * {eb})")]
    big, small = (a, b) if va >= vb else (b, a)
    if big[0] > small[0]:
        out.append((big[0] - small[0], f"({big[1]} - {small[1]})"))
    if small[0] > 1 and big[0] % small[0] == 0:
        out.append((big[0] // small[0], f"({big[1]} / {small[1]})"))
    return out


def _random_expression(rng: random.Random, numbers: list[int]) -> Term:
    """Fold the numbers pairwise at random into one expression using each exactly once."""
    terms: list[Term] = [(v, str(v)) for v in numbers]
    while len(terms) > 1:
        i, j = sorted(rng.sample(range(len(terms)), 2))
        b = terms.pop(j)
        a = terms.pop(i)
        terms.append(rng.choice(_candidates(a, b)))
    value, text = terms[0]
    return value, text[1:-1] if text.startswith("(") else text


def _puzzle(rng: random.Random, count: int, max_number: int, max_target: int) -> tuple[list[int], int, str]:
    for _ in range(_MAX_ATTEMPTS):
        numbers = [rng.randint(1, max_number) for _ in range(count)]
        target, solution = _random_expression(rng, numbers)
        if 1 <= target <= max_target:
            return numbers, target, solution
    raise RuntimeError(f"countdown: no target <= {max_target} found for {count} numbers up to {max_number}")


def generate(
    n: int,
    seed: int = 0,
    *,
    min_numbers: int = 3,
    max_numbers: int = 4,
    max_number: int = 99,
    max_target: int = 999,
    chat: bool = True,
) -> list[dict[str, Any]]:
    """``n`` puzzles of ``min_numbers``..``max_numbers`` numbers in 1..``max_number``, target in 1..``max_target``."""
    if not 2 <= min_numbers <= max_numbers:
        raise ValueError(f"countdown: need 2 <= min_numbers <= max_numbers, got {min_numbers}, {max_numbers}")
    if max_number < 1 or max_target < 1:
        raise ValueError("countdown: max_number and max_target must be >= 1")
    rng = random.Random(seed)
    rows = []
    for index in range(n):
        count = rng.randint(min_numbers, max_numbers)
        numbers, target, solution = _puzzle(rng, count, max_number, max_target)
        question = (
            f"Using the numbers {numbers}, create an equation that equals {target}. You can use basic "
            f"arithmetic operations (+, -, *, /) and each number can only be used once."
        )
        rows.append(verl_row(
            question,
            str(target),
            data_source=DATA_SOURCE,
            ability="math",
            extra_info={"numbers": numbers, "solution": solution, "index": index},
            chat=chat,
        ))
    return rows
