"""Load prompt rows from JSONL/Parquet files and summarise a file for ``r1ray data validate``."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from r1ray.data.files import iter_raw_rows
from r1ray.data.schema import ColumnMap, PromptRow, parse_row

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike


def iter_rows(path: PathLike, columns: ColumnMap = ColumnMap(), *, start_index: int = 0) -> Iterator[PromptRow]:
    """Yield the validated rows of one file; ``PromptRow.index`` counts from ``start_index``.

    Raises:
        DataError: on the first bad row, naming file:line, the field and the fix.
    """
    for offset, (where, raw) in enumerate(iter_raw_rows(path)):
        yield parse_row(raw, index=start_index + offset, where=where, columns=columns)


def load_rows(paths: PathLike | Sequence[PathLike], columns: ColumnMap = ColumnMap()) -> list[PromptRow]:
    """Load and validate every row of one file or of several files, in order.

    ``PromptRow.index`` runs across all files (0-based), so it identifies a row within the set.
    """
    files = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    rows: list[PromptRow] = []
    for path in files:
        rows.extend(iter_rows(path, columns, start_index=len(rows)))
    logger.info("loaded %d prompt rows from %s", len(rows), ", ".join(str(p) for p in files))
    return rows


def _prompt_chars(row: PromptRow) -> int:
    if isinstance(row.prompt, str):
        return len(row.prompt)
    return sum(len(message["content"]) for message in row.prompt)


@dataclass(frozen=True)
class DataSummary:
    """What a valid data file holds."""

    path: str
    rows: int
    data_sources: dict[str, int] = field(default_factory=dict)  # data_source -> rows
    prompt_kinds: dict[str, int] = field(default_factory=dict)  # "string" / "chat" -> rows
    mean_prompt_chars: float = 0.0

    def describe(self) -> str:
        """A few human-readable lines for the CLI."""
        sources = ", ".join(f"{name}: {count}" for name, count in sorted(self.data_sources.items()))
        kinds = ", ".join(f"{name}: {count}" for name, count in sorted(self.prompt_kinds.items()))
        return "\n".join([
            f"{self.path}: {self.rows} valid rows",
            f"  data sources: {sources}",
            f"  prompt kinds: {kinds}",
            f"  mean prompt length: {self.mean_prompt_chars:.1f} characters",
        ])


def validate_file(path: PathLike, column_map: ColumnMap = ColumnMap()) -> DataSummary:
    """Validate every row of ``path`` and summarise it; backs ``r1ray data validate FILE``.

    Raises:
        DataError: on the first bad row (or an empty/unreadable file).
    """
    sources: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    chars = 0
    n_rows = 0
    for row in iter_rows(path, column_map):
        n_rows += 1
        sources[row.data_source] += 1
        kinds["string" if isinstance(row.prompt, str) else "chat"] += 1
        chars += _prompt_chars(row)
    return DataSummary(
        path=str(path),
        rows=n_rows,
        data_sources=dict(sources),
        prompt_kinds=dict(kinds),
        mean_prompt_chars=chars / n_rows,
    )
