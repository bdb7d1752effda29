"""Prompt data: the verl row layout, loading and validation, templates, datasets and task generators.

Importing this package stays light (no torch, no pyarrow until a Parquet file is touched).
"""

from r1ray.data.dataset import PromptDataset, PromptItem, PromptSampler
from r1ray.data.files import iter_raw_rows, write_rows
from r1ray.data.loader import DataSummary, iter_rows, load_rows, validate_file
from r1ray.data.schema import ColumnMap, DataError, PromptRow, parse_row
from r1ray.data.tasks import TASKS, TaskSpec, get_task, make_task
from r1ray.data.template import R1_ZERO_TEMPLATE, TEMPLATES, render_prompt

__all__ = [
    "ColumnMap",
    "DataError",
    "DataSummary",
    "PromptDataset",
    "PromptItem",
    "PromptRow",
    "PromptSampler",
    "R1_ZERO_TEMPLATE",
    "TASKS",
    "TEMPLATES",
    "TaskSpec",
    "get_task",
    "iter_raw_rows",
    "iter_rows",
    "load_rows",
    "make_task",
    "parse_row",
    "render_prompt",
    "validate_file",
    "write_rows",
]
