"""GSM8K (Cobbe et al. 2021) converted from its own layout ``{"question", "answer"}`` to the verl layout.

The GSM8K answer is a worked solution ending in ``#### <number>``; the number (thousands separators
removed) becomes the ground truth and the full solution goes to ``extra_info["solution"]``. The
prompt stays the bare question: the R1 template asks for the answer tags.
"""

from __future__ import annotations

import os
from typing import Any

from r1ray.data.files import iter_raw_rows
from r1ray.data.schema import DataError
from r1ray.data.tasks.common import verl_row

DATA_SOURCE = "openai/gsm8k"
ANSWER_MARKER = "####"


def final_answer(solution: str) -> str | None:
    """The number after the last ``####`` with commas stripped, or None when there is no marker."""
    if ANSWER_MARKER not in solution:
        return None
    answer = solution.rsplit(ANSWER_MARKER, 1)[1].strip().replace(",", "")
    return answer or None


def convert_row(raw: Any, *, where: str, index: int, chat: bool = True) -> dict[str, Any]:
    """One GSM8K row as a verl row; DataError naming ``where`` when fields are missing or malformed."""
    if not isinstance(raw, dict):
        raise DataError(f"{where}: row is not an object (GSM8K rows are {{'question': ..., 'answer': ...}})")
    for key in ("question", "answer"):
        if not isinstance(raw.get(key), str):
            raise DataError(f"{where}: missing field '{key}' (GSM8K rows need string 'question' and 'answer')")
    answer = final_answer(raw["answer"])
    if answer is None:
        raise DataError(f"{where}: field 'answer' has no '{ANSWER_MARKER} <number>' line (is this GSM8K data?)")
    return verl_row(
        raw["question"],
        answer,
        data_source=DATA_SOURCE,
        ability="math",
        extra_info={"solution": raw["answer"], "index": index},
        chat=chat,
    )


def generate(
    n: int, seed: int = 0, *, source: str | os.PathLike | None = None, chat: bool = True
) -> list[dict[str, Any]]:
    """The first ``n`` problems of the GSM8K JSONL/Parquet file ``source``, in file order.

    ``seed`` is accepted for a uniform task interface; the file order already makes the output
    deterministic.
    """
    if source is None:
        raise ValueError("gsm8k: give source=PATH of a GSM8K JSONL or Parquet file (fields question, answer)")
    rows = []
    for where, raw in iter_raw_rows(source):
        if len(rows) == n:
            break
        rows.append(convert_row(raw, where=where, index=len(rows), chat=chat))
    if len(rows) < n:
        raise ValueError(f"gsm8k: {source} has only {len(rows)} problems, asked for n={n}")
    return rows
