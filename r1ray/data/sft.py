"""SFT data: (prompt, response) rows for cold start, rejection-sampled data and distillation.

Layout, one JSON object per line (or a Parquet row):
    {"prompt": "..." | [{"role": "user", "content": "..."}], "response": "<think>...</think><answer>...</answer>"}
Prompts are rendered with the same template as RL prompts, so the SFT'd model sees at RL time exactly
the context it was trained on; the loss covers response tokens only (and the EOS that ends them).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from r1ray.data.files import iter_raw_rows
from r1ray.data.schema import DataError, PromptRow
from r1ray.data.template import PromptStyle, as_style

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTExample:
    prompt_ids: list[int]      # templated prompt
    response_ids: list[int]    # response tokens, ending with EOS


def load_sft_rows(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Rows with a non-empty 'prompt' and 'response'; DataError naming file:line otherwise."""
    rows = []
    for path in paths:
        for where, raw in iter_raw_rows(path):
            if not isinstance(raw, dict):
                raise DataError(f"{where}: expected a JSON object with 'prompt' and 'response'")
            for key in ("prompt", "response"):
                if not raw.get(key):
                    raise DataError(f"{where}: missing or empty field '{key}' (SFT rows need 'prompt' and 'response')")
            if not isinstance(raw["response"], str):
                raise DataError(f"{where}: field 'response' must be a string")
            rows.append({"prompt": raw["prompt"], "response": raw["response"]})
    if not rows:
        raise DataError(f"no SFT rows in {', '.join(map(str, paths))} (check sft.train_files)")
    return rows


def tokenize_sft(rows: Sequence[dict[str, Any]], tokenizer: Any, template: str | PromptStyle,
                 max_length: int) -> tuple[list[SFTExample], int]:
    """Templated, tokenized examples; rows longer than max_length are dropped and counted."""
    style = as_style(template)
    eos = tokenizer.eos_token_id
    examples, dropped = [], 0
    for row in rows:
        prompt = tokenizer(style.render(row["prompt"], tokenizer),
                           add_special_tokens=style.template != "chat")["input_ids"]
        response = tokenizer(row["response"], add_special_tokens=False)["input_ids"] + [eos]
        if len(prompt) + len(response) > max_length:
            dropped += 1
            continue
        examples.append(SFTExample(list(prompt), list(response)))
    if dropped:
        logger.warning("dropped %d of %d SFT rows longer than %d tokens", dropped, len(rows), max_length)
    if not examples:
        raise DataError(f"every SFT row is longer than sft.max_length={max_length} tokens; raise it")
    return examples, dropped


def worked_solution(row: PromptRow) -> str | None:
    """An R1-format response that solves a generated task row, or None when the row carries no solution.

    Used to write cold-start SFT data: arithmetic shows the expression, countdown its equation,
    knights-and-knaves the identities, GSM8K its reference solution.
    """
    extra = row.extra_info or {}
    if row.data_source == "arithmetic" and "expression" in extra:
        return f"<think>{extra['expression']} = {row.ground_truth}</think> <answer>{row.ground_truth}</answer>"
    if row.data_source == "countdown" and "solution" in extra:
        return f"<think>{extra['solution']} = {row.ground_truth}</think> <answer>{extra['solution']}</answer>"
    if row.data_source == "knights_knaves":
        return f"<think>Check each person's statement against the others.</think> <answer>{row.ground_truth}</answer>"
    if "solution" in extra and isinstance(extra["solution"], str):
        reasoning = extra["solution"].split("####")[0].strip()
        return f"<think>{reasoning}</think> <answer>{row.ground_truth}</answer>"
    return None


def with_slip(row: PromptRow) -> str | None:
    """An arithmetic worked solution whose reasoning is right but whose final answer is off by one."""
    extra = row.extra_info or {}
    if row.data_source != "arithmetic" or "expression" not in extra:
        return None
    slipped = int(row.ground_truth) + 1
    return f"<think>{extra['expression']} = {row.ground_truth}</think> <answer>{slipped}</answer>"


def cold_start_rows(rows: Sequence[PromptRow], *, slip_rate: float = 0.0, seed: int = 0) -> list[dict[str, Any]]:
    """SFT rows for the task rows that have a worked solution.

    `slip_rate` makes that share of arithmetic solutions end in an answer off by one, like hand-written
    cold-start data with careless slips: the fine-tuned model then knows the format and often samples the
    right answer, but may prefer the slip, which RL with an accuracy reward can correct.
    """
    rng = random.Random(seed)
    out = []
    for row in rows:
        response = worked_solution(row)
        if response is not None and slip_rate and rng.random() < slip_rate:
            response = with_slip(row) or response
        if response is not None:
            out.append({"prompt": row.prompt, "response": response})
    return out
