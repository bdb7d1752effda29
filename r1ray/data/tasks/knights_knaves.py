"""Knights and Knaves logic puzzles with exactly one solution (after Xie et al. 2024, "On Memorization
of Large Language Models in Logical Reasoning").

Knights always tell the truth and knaves always lie. Every inhabitant makes one statement about
others; statements are drawn to be consistent with a random hidden assignment, and the puzzle is
kept only when a brute-force check over all 2^n assignments finds that assignment and no other.

Statements are stored in ``extra_info["statements"]`` (one per speaker, in person order) as
``{"op": "is" | "and" | "or" | "iff" | "implies", "a": CLAIM, "b": CLAIM | None}`` with
``CLAIM = {"person": int, "knight": bool}``, so rewards and tests can re-check a puzzle.
"""

from __future__ import annotations

import functools
import random
from typing import Any

from r1ray.data.tasks.common import verl_row

DATA_SOURCE = "knights_knaves"
NAMES = (
    "Zoey", "Oliver", "Ethan", "Mia", "Lucas", "Ava", "Noah", "Emma", "Liam", "Sofia",
    "Mason", "Chloe", "Jack", "Grace", "Henry", "Ella", "Owen", "Lily", "Leo", "Ruby",
)
BINARY_OPS = ("and", "or", "iff", "implies")
MIN_PEOPLE, MAX_PEOPLE = 2, 8
_MAX_ATTEMPTS = 10_000

Claim = dict[str, Any]
Statement = dict[str, Any]


@functools.lru_cache(maxsize=None)
def _knight_masks(n: int) -> tuple[int, ...]:
    """Per person p, the bitset of the 2^n assignments in which p is a knight.

    An assignment is an int whose bit p says whether person p is a knight; bit ``a`` of a bitset
    says whether assignment ``a`` belongs to the set, so statements combine with &, | and ^.
    """
    return tuple(
        sum(1 << assignment for assignment in range(1 << n) if assignment >> person & 1)
        for person in range(n)
    )


def _claim_mask(claim: Claim, n: int) -> int:
    """Bitset of the assignments in which ``claim`` holds."""
    knight = _knight_masks(n)[claim["person"]]
    return knight if claim["knight"] else ((1 << (1 << n)) - 1) & ~knight


def statement_mask(statement: Statement, n: int) -> int:
    """Bitset of the assignments under which ``statement`` is true."""
    full = (1 << (1 << n)) - 1
    a = _claim_mask(statement["a"], n)
    if statement["op"] == "is":
        return a
    b = _claim_mask(statement["b"], n)
    if statement["op"] == "and":
        return a & b
    if statement["op"] == "or":
        return a | b
    if statement["op"] == "iff":
        return full & ~(a ^ b)
    return full & (~a | b)  # implies


def consistent_assignments(statements: list[Statement], n: int) -> list[int]:
    """All assignments in which every knight's statement is true and every knave's is false."""
    full = (1 << (1 << n)) - 1
    ok = full
    for speaker, statement in enumerate(statements):
        speaker_knight = _claim_mask({"person": speaker, "knight": True}, n)
        ok &= full & ~(statement_mask(statement, n) ^ speaker_knight)
    return [a for a in range(1 << n) if ok >> a & 1]


def _random_statement(rng: random.Random, speaker: int, n: int) -> Statement:
    others = [p for p in range(n) if p != speaker]
    if rng.random() < 0.35:
        return {"op": "is", "a": {"person": rng.choice(others), "knight": rng.random() < 0.5}, "b": None}
    # Compound claims may mention the speaker too, which is how two-person puzzles become solvable.
    first, second = rng.sample(range(n), 2)
    return {
        "op": rng.choice(BINARY_OPS),
        "a": {"person": first, "knight": rng.random() < 0.5},
        "b": {"person": second, "knight": rng.random() < 0.5},
    }


def _consistent_statement(rng: random.Random, speaker: int, truth: int, n: int) -> Statement:
    """A random statement that is true exactly when the speaker is a knight under ``truth``."""
    speaker_knight = bool(truth >> speaker & 1)
    while True:
        statement = _random_statement(rng, speaker, n)
        if bool(statement_mask(statement, n) >> truth & 1) == speaker_knight:
            return statement


def _puzzle(rng: random.Random, n: int) -> tuple[int, list[Statement]]:
    truth = rng.getrandbits(n)
    statements = [_consistent_statement(rng, s, truth, n) for s in range(n)]
    for _ in range(_MAX_ATTEMPTS):
        if consistent_assignments(statements, n) == [truth]:
            return truth, statements
        # Re-draw one speaker at a time: far faster than re-drawing the whole puzzle for large n.
        speaker = rng.randrange(n)
        statements[speaker] = _consistent_statement(rng, speaker, truth, n)
    raise RuntimeError(f"knights_knaves: no unique puzzle for n_people={n} after {_MAX_ATTEMPTS} attempts")


def _claim_text(claim: Claim, names: list[str]) -> str:
    return f"{names[claim['person']]} is a {'knight' if claim['knight'] else 'knave'}"


def statement_text(statement: Statement, names: list[str]) -> str:
    """English for a statement, e.g. "Zoey is a knight if and only if Ethan is a knave"."""
    a = _claim_text(statement["a"], names)
    if statement["op"] == "is":
        return a
    b = _claim_text(statement["b"], names)
    if statement["op"] == "implies":
        return f"if {a} then {b}"
    joiner = {"and": "and", "or": "or", "iff": "if and only if"}[statement["op"]]
    return f"{a} {joiner} {b}"


def solution_text(knights: list[bool], names: list[str]) -> str:
    """Ground-truth text, e.g. "Zoey is a knight, Oliver is a knave" (in person order)."""
    return ", ".join(f"{name} is a {'knight' if k else 'knave'}" for name, k in zip(names, knights))


def _question(names: list[str], statements: list[Statement]) -> str:
    people = ", ".join(names[:-1]) + f" and {names[-1]}"
    said = " ".join(f"{names[s]} says that {statement_text(st, names)}." for s, st in enumerate(statements))
    return (
        "On an island, knights always tell the truth and knaves always lie. "
        f"You meet {len(names)} inhabitants: {people}. {said} "
        'Who is a knight and who is a knave? Answer in the order above, each as "NAME is a knight" '
        'or "NAME is a knave", separated by commas.'
    )


def generate(n: int, seed: int = 0, *, n_people: int = 3, chat: bool = True) -> list[dict[str, Any]]:
    """``n`` puzzles with ``n_people`` inhabitants each (2..8; more people is harder)."""
    if not MIN_PEOPLE <= n_people <= MAX_PEOPLE:
        raise ValueError(f"knights_knaves: n_people must be in {MIN_PEOPLE}..{MAX_PEOPLE}, got {n_people}")
    rng = random.Random(seed)
    rows = []
    for index in range(n):
        names = rng.sample(NAMES, n_people)
        truth, statements = _puzzle(rng, n_people)
        knights = [bool(truth >> p & 1) for p in range(n_people)]
        rows.append(verl_row(
            _question(names, statements),
            solution_text(knights, names),
            data_source=DATA_SOURCE,
            ability="logic",
            extra_info={
                "names": names,
                "statements": statements,
                "solution": ["knight" if k else "knave" for k in knights],
                "n_people": n_people,
                "index": index,
            },
            chat=chat,
        ))
    return rows
