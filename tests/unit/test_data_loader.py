"""Loading verl-layout JSONL/Parquet rows, column mapping, and one-line file:line validation errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r1ray.data import ColumnMap, DataError, PromptRow, load_rows, validate_file, write_rows

CHAT_ROW = {
    "data_source": "openai/gsm8k",
    "prompt": [{"role": "user", "content": "What is 2 + 3?"}],
    "reward_model": {"style": "rule", "ground_truth": "5"},
    "extra_info": {"split": "train"},
}
STRING_ROW = {"data_source": "arithmetic", "prompt": "What is 4 * 4?", "reward_model": {"ground_truth": 16}}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_string_and_chat_prompts(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [CHAT_ROW, STRING_ROW])
    rows = load_rows(path)
    assert rows[0] == PromptRow(
        prompt=[{"role": "user", "content": "What is 2 + 3?"}],
        ground_truth="5",
        data_source="openai/gsm8k",
        extra_info={"split": "train"},
        index=0,
    )
    assert rows[1].prompt == "What is 4 * 4?"
    assert rows[1].ground_truth == "16"  # numbers become strings
    assert rows[1].extra_info == {}
    assert rows[1].index == 1


def test_parquet_round_trip(tmp_path):
    path = write_rows([CHAT_ROW, {**CHAT_ROW, "reward_model": {"style": "rule", "ground_truth": "7"}}],
                      tmp_path / "train.parquet")
    rows = load_rows(path)
    assert [r.ground_truth for r in rows] == ["5", "7"]
    assert rows[0].prompt == CHAT_ROW["prompt"]
    assert rows[0].extra_info == {"split": "train"}


def test_several_files_index_runs_across_them(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [CHAT_ROW])
    second = write_rows([STRING_ROW, STRING_ROW], tmp_path / "b.parquet")
    assert [r.index for r in load_rows([first, second])] == [0, 1, 2]


def test_column_map_for_other_layouts(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "2+2?", "answer": 4.0, "meta": {"src": "mine"}}])
    columns = ColumnMap(
        prompt="question", ground_truth="answer", extra_info="meta", default_data_source="arithmetic"
    )
    (row,) = load_rows(path, columns)
    assert (row.prompt, row.ground_truth, row.data_source, row.extra_info) == ("2+2?", "4", "arithmetic", {"src": "mine"})


def test_dotted_and_literal_dotted_keys(tmp_path):
    nested = {"q": {"text": "hi"}, "gt": {"a": {"b": "x"}}, "src": "s"}
    flat = {"q.text": "hi", "gt.a.b": "y", "src": "s"}
    path = write_jsonl(tmp_path / "d.jsonl", [nested, flat])
    rows = load_rows(path, ColumnMap(prompt="q.text", ground_truth="gt.a.b", data_source="src"))
    assert [r.ground_truth for r in rows] == ["x", "y"]


def test_blank_lines_skipped_but_counted(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(CHAT_ROW) + "\n\n" + json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(DataError, match=r"t\.jsonl:3: missing field"):
        load_rows(path)


@pytest.mark.parametrize("row, expected", [
    ({"prompt": "q", "data_source": "s"},
     "train.jsonl:2: missing field 'reward_model.ground_truth' "
     "(set data.ground_truth_key to the column that holds the answer)"),
    ({"reward_model": {"ground_truth": "1"}, "data_source": "s"},
     "train.jsonl:2: missing field 'prompt' (set data.prompt_key"),
    ({"prompt": "q", "reward_model": {"ground_truth": "1"}},
     "train.jsonl:2: missing field 'data_source' (set data.data_source_key"),
    ({"prompt": "q", "reward_model": {"ground_truth": None}, "data_source": "s"},
     "train.jsonl:2: null value in field 'reward_model.ground_truth'"),
    ({"prompt": 5, "reward_model": {"ground_truth": "1"}, "data_source": "s"},
     "train.jsonl:2: field 'prompt' must be a string or a list of chat messages, got int"),
    ({"prompt": [{"role": "user"}], "reward_model": {"ground_truth": "1"}, "data_source": "s"},
     "train.jsonl:2: field 'prompt' message 0 must be {'role': str, 'content': str}"),
    ({"prompt": [], "reward_model": {"ground_truth": "1"}, "data_source": "s"},
     "train.jsonl:2: field 'prompt' is an empty list"),
    ({"prompt": "q", "reward_model": {"ground_truth": ["1"]}, "data_source": "s"},
     "train.jsonl:2: field 'reward_model.ground_truth' must be a string or a number, got list"),
    ({"prompt": "q", "reward_model": {"ground_truth": ""}, "data_source": "s"},
     "train.jsonl:2: field 'reward_model.ground_truth' is an empty string"),
    ({"prompt": "q", "reward_model": {"ground_truth": "1"}, "data_source": ""},
     "train.jsonl:2: field 'data_source' must be a non-empty string"),
    ({"prompt": "q", "reward_model": {"ground_truth": "1"}, "data_source": "s", "extra_info": [1]},
     "train.jsonl:2: field 'extra_info' must be an object, got list"),
    ([1, 2], "train.jsonl:2: row is list, not an object"),
])
def test_row_errors_name_file_line_and_field(tmp_path, row, expected):
    path = write_jsonl(tmp_path / "train.jsonl", [CHAT_ROW, row])
    with pytest.raises(DataError) as error:
        load_rows(path)
    message = str(error.value)
    assert expected in message
    assert message.startswith(str(path) + ":2: ")
    assert "\n" not in message


def test_invalid_json_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(CHAT_ROW) + "\n" + '{"prompt": "x",\n')
    with pytest.raises(DataError, match=r"train\.jsonl:2: invalid JSON \(.*at column \d+\) \(each line must hold"):
        load_rows(path)


def test_parquet_error_names_row(tmp_path):
    table = pa.Table.from_pylist([
        {"prompt": "a", "reward_model": {"ground_truth": "1"}, "data_source": "s"},
        {"prompt": "b", "reward_model": {"ground_truth": None}, "data_source": "s"},
    ])
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataError, match=r"d\.parquet:2: null value in field 'reward_model\.ground_truth'"):
        load_rows(path)


@pytest.mark.parametrize("name, content, expected", [
    ("empty.jsonl", "", "empty.jsonl: no rows"),
    ("blank.jsonl", "\n\n", "blank.jsonl: no rows"),
    ("data.csv", "a,b\n", "unsupported file type '.csv'"),
    ("broken.parquet", "not parquet", "broken.parquet: cannot read Parquet"),
])
def test_file_level_errors(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=expected.replace(".", r"\.").replace("(", r"\(")):
        validate_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        load_rows(tmp_path / "nope.jsonl")


def test_empty_parquet(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    with pytest.raises(DataError, match="e.parquet: no rows"):
        validate_file(path)


def test_validate_file_summary(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [CHAT_ROW, STRING_ROW, STRING_ROW])
    summary = validate_file(path)
    assert summary.rows == 3
    assert summary.data_sources == {"openai/gsm8k": 1, "arithmetic": 2}
    assert summary.prompt_kinds == {"chat": 1, "string": 2}
    assert summary.mean_prompt_chars == pytest.approx(14.0)  # both prompts have 14 characters
    assert "3 valid rows" in summary.describe()


def test_write_rows_is_atomic_and_refuses_empty(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        write_rows([], tmp_path / "x.jsonl")
    write_rows([CHAT_ROW], tmp_path / "x.jsonl")
    assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]
