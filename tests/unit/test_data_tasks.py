"""Task generators: deterministic per seed, correct ground truths, unique Knights-and-Knaves solutions."""

from __future__ import annotations

import ast
import itertools
import json
import operator
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from r1ray.data import TASKS, load_rows, make_task, validate_file

DATA = Path(__file__).resolve().parents[1] / "data"
GSM8K_SAMPLE = DATA / "gsm8k_sample.jsonl"
OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def question(row):
    return row.prompt[0]["content"] if isinstance(row.prompt, list) else row.prompt


@pytest.mark.parametrize("task, knobs", [
    ("arithmetic", {"digits": 3, "operations": "+-*/"}),
    ("countdown", {}),
    ("knights_knaves", {"n_people": 5}),
    ("gsm8k", {"source": str(GSM8K_SAMPLE)}),
])
def test_deterministic_per_seed_and_loadable(tmp_path, task, knobs):
    first = make_task(task, 12, tmp_path / "a.jsonl", seed=7, **knobs)
    again = make_task(task, 12, tmp_path / "b.jsonl", seed=7, **knobs)
    assert first.read_bytes() == again.read_bytes()
    summary = validate_file(first)
    assert summary.rows == 12
    assert summary.data_sources == {TASKS[task].data_source: 12}
    if task != "gsm8k":  # gsm8k takes the file's first n rows whatever the seed
        assert make_task(task, 12, tmp_path / "c.jsonl", seed=8, **knobs).read_bytes() != first.read_bytes()


def test_parquet_output_matches_jsonl(tmp_path):
    jsonl = load_rows(make_task("knights_knaves", 6, tmp_path / "k.jsonl", seed=1))
    parquet = load_rows(make_task("knights_knaves", 6, tmp_path / "k.parquet", seed=1))
    assert [(r.prompt, r.ground_truth, r.data_source) for r in parquet] == [
        (r.prompt, r.ground_truth, r.data_source) for r in jsonl
    ]
    assert parquet[0].extra_info["statements"] == jsonl[0].extra_info["statements"]


def test_arithmetic_ground_truths(tmp_path):
    rows = load_rows(make_task("arithmetic", 200, tmp_path / "a.jsonl", seed=0, digits=2, operations="+-*/"))
    ops_seen = set()
    for row in rows:
        expression = question(row).removeprefix("What is ").removesuffix("?")
        a, op, b = expression.split()
        ops_seen.add(op)
        assert len(b) == 2
        exact = OPS[type(ast.parse(f"0 {op} 0", mode="eval").body.op)](Fraction(a), Fraction(b))
        assert exact.denominator == 1
        assert row.ground_truth == str(exact.numerator)
    assert ops_seen == set("+-*/")


def evaluate(node):
    """Exact value of a countdown solution, and the numbers it uses."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value), [node.value]
    left, used_left = evaluate(node.left)
    right, used_right = evaluate(node.right)
    return OPS[type(node.op)](left, right), used_left + used_right


def test_countdown_targets_reachable(tmp_path):
    rows = load_rows(make_task("countdown", 200, tmp_path / "c.jsonl", seed=0))
    for row in rows:
        numbers = row.extra_info["numbers"]
        assert 3 <= len(numbers) <= 4
        value, used = evaluate(ast.parse(row.extra_info["solution"], mode="eval").body)
        assert value == Fraction(int(row.ground_truth))
        assert Counter(used) == Counter(numbers)
        assert f"Using the numbers {numbers}, create an equation that equals {row.ground_truth}." in question(row)


def claim_holds(claim, knights):
    return knights[claim["person"]] == claim["knight"]


def statement_holds(statement, knights):
    a = claim_holds(statement["a"], knights)
    if statement["op"] == "is":
        return a
    b = claim_holds(statement["b"], knights)
    return {"and": a and b, "or": a or b, "iff": a == b, "implies": (not a) or b}[statement["op"]]


@pytest.mark.parametrize("n_people", [2, 3, 5, 8])
def test_knights_knaves_exactly_one_solution(tmp_path, n_people):
    rows = load_rows(make_task("knights_knaves", 15, tmp_path / "k.jsonl", seed=n_people, n_people=n_people))
    for row in rows:
        names, statements = row.extra_info["names"], row.extra_info["statements"]
        assert len(names) == len(set(names)) == n_people
        solutions = [
            knights for knights in itertools.product([False, True], repeat=n_people)
            if all(statement_holds(s, knights) == knights[i] for i, s in enumerate(statements))
        ]
        assert len(solutions) == 1
        expected = ", ".join(f"{n} is a {'knight' if k else 'knave'}" for n, k in zip(names, solutions[0]))
        assert row.ground_truth == expected
        assert f"{names[0]} says that " in question(row)


def test_knights_knaves_statement_wording(tmp_path):
    text = " ".join(question(r) for r in load_rows(make_task("knights_knaves", 40, tmp_path / "k.jsonl", n_people=4)))
    for joiner in ("and", "or", "if and only if", "then"):
        assert re.search(rf"says that (if )?\w+ is a kn(ight|ave) {joiner} \w+ is a kn(ight|ave)\.", text), joiner


def test_gsm8k_conversion_on_real_sample(tmp_path):
    rows = load_rows(make_task("gsm8k", 20, tmp_path / "g.jsonl", source=GSM8K_SAMPLE))
    raw = [json.loads(line) for line in GSM8K_SAMPLE.read_text().splitlines()]
    assert rows[0].ground_truth == "18"  # Janet's ducks
    assert question(rows[0]) == raw[0]["question"]
    assert rows[0].data_source == "openai/gsm8k"
    for row, original in zip(rows, raw):
        assert row.extra_info["solution"] == original["answer"]
        assert row.ground_truth == original["answer"].split("####")[-1].strip().replace(",", "")
        assert "," not in row.ground_truth


def test_gsm8k_strips_thousands_separators(tmp_path):
    source = tmp_path / "src.jsonl"
    source.write_text(json.dumps({"question": "q", "answer": "work\n#### 1,234"}) + "\n")
    (row,) = load_rows(make_task("gsm8k", 1, tmp_path / "g.jsonl", source=source))
    assert row.ground_truth == "1234"


def test_gsm8k_errors(tmp_path):
    with pytest.raises(ValueError, match="give source=PATH"):
        make_task("gsm8k", 1, tmp_path / "g.jsonl")
    with pytest.raises(ValueError, match="has only 20 problems, asked for n=21"):
        make_task("gsm8k", 21, tmp_path / "g.jsonl", source=GSM8K_SAMPLE)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "no marker"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: field 'answer' has no '####"):
        make_task("gsm8k", 1, tmp_path / "g.jsonl", source=bad)
    assert not (tmp_path / "g.jsonl").exists()


def test_unknown_task_and_knob(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'countdown'"):
        make_task("countdwn", 1, tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="unknown knob 'digit'.*did you mean 'digits'"):
        make_task("arithmetic", 1, tmp_path / "x.jsonl", digit=3)
    with pytest.raises(ValueError, match="n_people must be in 2..8"):
        make_task("knights_knaves", 1, tmp_path / "x.jsonl", n_people=9)
