"""The typed prompt row, the column mapping onto it, and row validation with fix-it messages.

Rows follow the verl layout::

    {"prompt": [{"role": "user", "content": "..."}] | "...",
     "reward_model": {"ground_truth": "..."},
     "data_source": "openai/gsm8k",
     "extra_info": {...}}

Other layouts are read through a ``ColumnMap``. Every problem raises ``DataError`` with a one-line
message ``FILE:LINE: what is wrong (how to fix it)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# Which config key fixes which column (the names of r1ray's DataConfig).
CONFIG_KEYS: dict[str, str] = {
    "prompt": "data.prompt_key",
    "ground_truth": "data.ground_truth_key",
    "data_source": "data.data_source_key",
    "extra_info": "data.extra_info_key",
}
_MISSING_HINTS: dict[str, str] = {
    "prompt": "set data.prompt_key to the column that holds the question",
    "ground_truth": "set data.ground_truth_key to the column that holds the answer",
    "data_source": "set data.data_source_key to the column that names the reward",
}


class DataError(ValueError):
    """A data file or row that cannot be used; the message is one line naming file:line and field."""


@dataclass(frozen=True)
class ColumnMap:
    """Where each ``PromptRow`` field lives in a raw row; dotted paths reach into nested dicts.

    ``default_data_source`` is used for files that have no data-source column at all
    (for example a plain ``{"question", "answer"}`` file).
    """

    prompt: str = "prompt"
    ground_truth: str = "reward_model.ground_truth"
    data_source: str = "data_source"
    extra_info: str = "extra_info"
    default_data_source: str | None = None


@dataclass(frozen=True)
class PromptRow:
    """One validated prompt with what the reward needs to score its responses."""

    prompt: str | list[dict[str, str]]  # a plain string or chat messages [{"role", "content"}]
    ground_truth: str
    data_source: str  # selects the reward function
    extra_info: dict[str, Any] = field(default_factory=dict)
    index: int = 0  # position of the row among the rows loaded together (0-based)


_MISSING = object()


def lookup(raw: dict[str, Any], path: str) -> Any:
    """Value at dotted ``path`` in ``raw`` (a literal top-level key wins), or the ``_MISSING`` sentinel."""
    if path in raw:
        return raw[path]
    node: Any = raw
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _parse_prompt(value: Any, where: str, path: str) -> str | list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field '{path}' is an empty string (every row needs a question)")
        return value
    if not isinstance(value, list):
        raise DataError(
            f"{where}: field '{path}' must be a string or a list of chat messages, got {_type_name(value)} "
            f"({_MISSING_HINTS['prompt']})"
        )
    if not value:
        raise DataError(f"{where}: field '{path}' is an empty list (give at least one chat message)")
    messages = []
    for i, message in enumerate(value):
        ok = isinstance(message, dict) and all(isinstance(message.get(k), str) for k in ("role", "content"))
        if not ok:
            raise DataError(
                f"{where}: field '{path}' message {i} must be {{'role': str, 'content': str}}, "
                f"got {str(message)[:60]} (fix the chat messages of this row)"
            )
        messages.append({"role": message["role"], "content": message["content"]})
    if not any(m["role"] == "user" for m in messages):
        roles = ", ".join(m["role"] for m in messages)
        raise DataError(f"{where}: field '{path}' has no user message (roles: {roles}); the question must be a "
                        f"{{'role': 'user', 'content': ...}} message")
    return messages


def _parse_ground_truth(value: Any, where: str, path: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(
            f"{where}: field '{path}' must be a string or a number, got {_type_name(value)} "
            f"({_MISSING_HINTS['ground_truth']})"
        )
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DataError(f"{where}: field '{path}' is {value} (the answer must be a finite number or a string)")
        # Parquet/pandas turn integer columns with gaps into floats; "18.0" would not match "18".
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value)
    if not text.strip():
        raise DataError(f"{where}: field '{path}' is an empty string (every row needs an answer)")
    return text


def _parse_data_source(value: Any, where: str, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(
            f"{where}: field '{path}' must be a non-empty string naming the reward, got {value!r} "
            f"({_MISSING_HINTS['data_source']})"
        )
    return value


def _required(raw: dict[str, Any], name: str, path: str, where: str, default: Any = _MISSING) -> Any:
    value = lookup(raw, path)
    if value is _MISSING or value is None:
        if default is not _MISSING:
            return default
        what = "missing field" if value is _MISSING else "null value in field"
        raise DataError(f"{where}: {what} '{path}' ({_MISSING_HINTS[name]})")
    return value


def parse_row(raw: Any, *, index: int, where: str, columns: ColumnMap = ColumnMap()) -> PromptRow:
    """Validate one raw row and return it typed.

    Args:
        raw: the decoded row (a dict for valid data).
        index: position given to ``PromptRow.index``.
        where: ``"FILE:LINE"`` put at the start of error messages.
        columns: where the fields live in ``raw``.

    Raises:
        DataError: naming ``where``, the field and the fix.
    """
    if not isinstance(raw, dict):
        raise DataError(f"{where}: row is {_type_name(raw)}, not an object (each row must be one JSON object)")
    prompt = _parse_prompt(_required(raw, "prompt", columns.prompt, where), where, columns.prompt)
    ground_truth = _parse_ground_truth(
        _required(raw, "ground_truth", columns.ground_truth, where), where, columns.ground_truth
    )
    fallback = _MISSING if columns.default_data_source is None else columns.default_data_source
    source = _required(raw, "data_source", columns.data_source, where, default=fallback)
    data_source = _parse_data_source(source, where, columns.data_source)
    extra_info = lookup(raw, columns.extra_info)
    if extra_info is _MISSING or extra_info is None:
        extra_info = {}
    if not isinstance(extra_info, dict):
        raise DataError(
            f"{where}: field '{columns.extra_info}' must be an object, got {_type_name(extra_info)} "
            f"(set data.extra_info_key to a column of objects, or drop the column)"
        )
    return PromptRow(prompt=prompt, ground_truth=ground_truth, data_source=data_source,
                     extra_info=extra_info, index=index)
