"""SFT data: cold-start worked solutions per task, SFT row validation, and tokenization (template, EOS,
overlong rows). Worked solutions are scored with the real reward functions, in process."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from r1ray.data import DataError, PromptDataset, PromptRow, get_task, parse_row
from r1ray.data.sft import SFTExample, cold_start_rows, load_sft_rows, tokenize_sft, worked_solution
from r1ray.data.tasks.gsm8k import convert_row
from r1ray.models import build_char_tokenizer
from r1ray.rewards import RewardItem, score_item

REPO = Path(__file__).resolve().parents[2]
GSM8K_SAMPLE = REPO / "tests" / "data" / "gsm8k_sample.jsonl"


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def task_rows(task: str, n: int = 4) -> list[PromptRow]:
    return [parse_row(raw, index=i, where=f"{task}:{i}") for i, raw in enumerate(get_task(task).generate(n, 0))]


def gsm8k_rows(n: int = 3) -> list[PromptRow]:
    lines = GSM8K_SAMPLE.read_text().splitlines()[:n]
    return [parse_row(convert_row(json.loads(line), where=f"gsm8k:{i}", index=i), index=i, where=f"gsm8k:{i}")
            for i, line in enumerate(lines)]


def accuracy_and_format(row: PromptRow, response: str) -> dict:
    item = RewardItem(response=response, ground_truth=row.ground_truth, data_source=row.data_source,
                      extra=dict(row.extra_info))
    result = score_item(["auto", "format"], [1.0, 0.1], item)
    assert result.status == "ok", result
    return result.components


# ---- worked solutions (cold-start data) ------------------------------------------------------------


def test_arithmetic_worked_solution_shows_the_expression():
    row = task_rows("arithmetic", 1)[0]
    expression = row.extra_info["expression"]
    assert worked_solution(row) == (f"<think>{expression} = {row.ground_truth}</think> "
                                    f"<answer>{row.ground_truth}</answer>")


def test_countdown_worked_solution_answers_with_its_equation():
    row = task_rows("countdown", 1)[0]
    solution = row.extra_info["solution"]
    assert worked_solution(row) == f"<think>{solution} = {row.ground_truth}</think> <answer>{solution}</answer>"


def test_gsm8k_worked_solution_keeps_the_reasoning_without_the_answer_line():
    row = gsm8k_rows(1)[0]
    response = worked_solution(row)
    assert response.startswith("<think>Janet sells 16 - 3 - 4") and "####" not in response
    assert response.endswith("</think> <answer>18</answer>")


@pytest.mark.parametrize("task", ["arithmetic", "countdown", "knights_knaves", "gsm8k"])
def test_every_worked_solution_is_scored_correct_and_well_formatted(task):
    """Cold-start data must teach right answers: the accuracy reward (>= 1.0 counts as correct) and the
    format reward both accept every worked solution."""
    rows = gsm8k_rows() if task == "gsm8k" else task_rows(task)
    for row in rows:
        components = accuracy_and_format(row, worked_solution(row))
        assert components["auto"] >= 1.0 and components["format"] == 1.0, (row, components)


def test_rows_without_a_solution_give_none_and_are_skipped():
    with_solution = task_rows("arithmetic", 2)
    bare = PromptRow(prompt="What is 2 + 2?", ground_truth="4", data_source="arithmetic")  # no expression
    other = PromptRow(prompt="q", ground_truth="1", data_source="my_source", extra_info={"solution": 3})
    assert worked_solution(bare) is None and worked_solution(other) is None
    rows = cold_start_rows([with_solution[0], bare, other, with_solution[1]])
    assert rows == [{"prompt": r.prompt, "response": worked_solution(r)} for r in with_solution]


def test_slip_rate_ends_that_share_of_arithmetic_answers_off_by_one():
    """Imperfect cold-start data: the reasoning stays right, the final answer slips by one."""
    rows = task_rows("arithmetic", 400)
    out = cold_start_rows(rows, slip_rate=0.6, seed=3)
    assert [r["prompt"] for r in out] == [row.prompt for row in rows]
    slipped = 0
    for row, sft in zip(rows, out):
        if sft["response"] == worked_solution(row):
            continue
        slipped += 1
        expression, answer = row.extra_info["expression"], row.ground_truth
        assert sft["response"] == f"<think>{expression} = {answer}</think> <answer>{int(answer) + 1}</answer>"
        components = accuracy_and_format(row, sft["response"])
        assert components["auto"] == 0.0 and components["format"] == 1.0
    assert 0.5 < slipped / len(rows) < 0.7
    assert cold_start_rows(rows, slip_rate=0.6, seed=3) == out                      # deterministic per seed
    assert cold_start_rows(rows, slip_rate=0.6, seed=4) != out
    assert cold_start_rows(rows, slip_rate=0.0) == cold_start_rows(rows)


def test_slips_only_touch_arithmetic():
    rows = task_rows("countdown", 3) + gsm8k_rows(2)
    assert cold_start_rows(rows, slip_rate=1.0) == cold_start_rows(rows)


# ---- loading SFT rows ------------------------------------------------------------------------------


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_load_sft_rows_reads_string_and_chat_prompts_from_several_files(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p1", "response": "r1", "extra": 1}])
    chat = [{"role": "user", "content": "p2"}]
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": chat, "response": "r2"}])
    assert load_sft_rows([a, str(b)]) == [{"prompt": "p1", "response": "r1"}, {"prompt": chat, "response": "r2"}]


@pytest.mark.parametrize("row, field", [
    ({"response": "r"}, "'prompt'"),
    ({"prompt": "", "response": "r"}, "'prompt'"),
    ({"prompt": "p"}, "'response'"),
    ({"prompt": "p", "response": ""}, "'response'"),
    ({"prompt": "p", "response": ["not", "a", "string"]}, "'response' must be a string"),
    (["prompt", "response"], "expected a JSON object"),
])
def test_load_sft_rows_errors_name_file_line_and_field(tmp_path, row, field):
    # Line 3: one good row, one blank line (counted), then the bad one.
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "response": "r"}, "", row])
    with pytest.raises(DataError) as error:
        load_sft_rows([path])
    message = str(error.value)
    assert message.startswith(f"{path}:3: ") and field in message and "\n" not in message


def test_load_sft_rows_on_an_empty_or_missing_file(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(DataError, match="empty.jsonl: no rows"):
        load_sft_rows([empty])
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        load_sft_rows([tmp_path / "missing.jsonl"])
    with pytest.raises(DataError, match="check sft.train_files"):
        load_sft_rows([])


def test_load_sft_rows_reads_parquet(tmp_path):
    from r1ray.data import write_rows

    path = write_rows([{"prompt": "p", "response": "r"}], tmp_path / "sft.parquet")
    assert load_sft_rows([path]) == [{"prompt": "p", "response": "r"}]


# ---- tokenization ----------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["r1_zero", "chat", "none"])
def test_prompts_are_tokenized_exactly_as_rl_prompts(tokenizer, template):
    """The SFT'd model must see at RL time the very context it was trained on."""
    rows = task_rows("arithmetic", 3)
    sft = cold_start_rows(rows)
    examples, dropped = tokenize_sft(sft, tokenizer, template, max_length=10_000)
    rl = PromptDataset(rows, tokenizer, template, max_prompt_length=None)
    assert dropped == 0
    assert [e.prompt_ids for e in examples] == [item.prompt_ids for item in rl.items]


def test_responses_end_with_eos_and_hold_the_response_tokens(tokenizer):
    response = "<think>3 + 4 = 7</think> <answer>7</answer>"
    [example], _ = tokenize_sft([{"prompt": "What is 3 + 4?", "response": response}], tokenizer, "none", 100)
    assert isinstance(example, SFTExample)
    assert example.response_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.eos_token_id not in example.response_ids[:-1]
    assert tokenizer.decode(example.response_ids[:-1]) == response
    assert tokenizer.decode(example.prompt_ids) == "What is 3 + 4?"


def test_overlong_rows_are_dropped_and_counted(tokenizer, caplog):
    # The character tokenizer gives one token per character; the response also carries the EOS.
    rows = [{"prompt": "ab", "response": "c" * n} for n in (1, 7, 8, 20)]   # 4, 10, 11, 23 tokens
    with caplog.at_level(logging.WARNING):
        examples, dropped = tokenize_sft(rows, tokenizer, "none", max_length=10)
    assert dropped == 2
    assert [len(e.prompt_ids) + len(e.response_ids) for e in examples] == [4, 10]   # the limit is inclusive
    assert "dropped 2 of 4 SFT rows longer than 10 tokens" in caplog.text


def test_every_row_overlong_is_an_error_naming_the_setting(tokenizer):
    with pytest.raises(DataError, match="sft.max_length=3"):
        tokenize_sft([{"prompt": "abc", "response": "def"}], tokenizer, "none", max_length=3)
