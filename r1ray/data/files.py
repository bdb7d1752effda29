"""Reading raw rows from JSONL/Parquet with their file:line position, and writing rows atomically."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from r1ray.data.schema import DataError

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
_PARQUET_BATCH_ROWS = 1024


def file_format(path: str | os.PathLike) -> str:
    """``"jsonl"`` or ``"parquet"`` from the file name; DataError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise DataError(f"{path}: unsupported file type '{suffix}' (use .jsonl, .json (JSON Lines) or .parquet)")


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    line_no = 0
    try:
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{line_no}", json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(
                        f"{path}:{line_no}: invalid JSON ({error.msg} at column {error.colno}) "
                        f"(each line must hold one complete JSON object; convert a JSON array with jq -c '.[]')"
                    ) from None
    except UnicodeDecodeError:
        raise DataError(f"{path}:{line_no + 1}: not valid UTF-8 (re-encode the file as UTF-8)") from None


def _iter_parquet(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        row_no = 0
        for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for raw in batch.to_pylist():
                row_no += 1
                yield f"{path}:{row_no}", raw
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: cannot read Parquet ({_one_line(error)}) (check the file is complete)") from None


def iter_raw_rows(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, raw_row)`` for every row of a JSONL or Parquet file.

    ``where`` is ``"FILE:N"`` with N the 1-based line for JSONL (blank lines are skipped but
    counted) and the 1-based row number for Parquet.

    Raises:
        DataError: missing file, unsupported type, invalid JSON or UTF-8, unreadable Parquet, no rows.
    """
    fmt = file_format(path)
    if not Path(path).is_file():
        raise DataError(f"{path}: file not found (check data.train_files / data.val_files)")
    rows = _iter_jsonl(path) if fmt == "jsonl" else _iter_parquet(path)
    empty = True
    for where, raw in rows:
        empty = False
        yield where, raw
    if empty:
        raise DataError(f"{path}: no rows (the file is empty; point the config at a file with prompts)")


def write_rows(rows: Sequence[dict[str, Any]], out: str | os.PathLike) -> Path:
    """Write ``rows`` to ``out`` (JSONL, or Parquet when it ends with .parquet) atomically.

    The rows go to a temporary file beside ``out`` that is renamed over it when complete, so a
    reader never sees a partial file.
    """
    if not rows:
        raise ValueError(f"refusing to write an empty data file to {out}")
    target = Path(out)
    fmt = file_format(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        if fmt == "parquet":
            os.close(fd)
            _write_parquet(rows, tmp_name)
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    logger.info("wrote %d rows to %s", len(rows), target)
    return target


def _write_parquet(rows: Sequence[dict[str, Any]], path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(list(rows)), path)
