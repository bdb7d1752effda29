"""Loading errors that come from the user's files, turned into one line naming the file and the fix.

Without this, a truncated `model.safetensors` ends a run with safetensors' "incomplete metadata, file not
fully covered" (no file named), and resuming another model's checkpoint with torch.distributed.checkpoint's
`CheckpointException` whose per-rank tracebacks bury "Size mismatch" under the first lines a report
shows. Both would then be offered restarts, which load the same file again.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from r1ray.errors import InputMismatch

# torch.distributed.checkpoint (default_planner) and nn.Module.load_state_dict, in that order.
_DCP_SIZE = re.compile(r"Size mismatch between saved (torch\.Size\(\[[^\]]*\]\)) and current: "
                       r"(torch\.Size\(\[[^\]]*\]\)) for ([\w.\-]+)")
_STATE_DICT_SIZE = re.compile(r"size mismatch for ([\w.\-]+): copying a param with shape (torch\.Size\(\[[^\]]*\]\)) "
                              r"from checkpoint, the shape in current model is (torch\.Size\(\[[^\]]*\]\))")
_DAMAGED = ("Error while deserializing header", "incomplete metadata", "HeaderTooLarge", "MetadataIncompleteBuffer",
            "PytorchStreamReader failed", "unexpected EOF", "file not fully covered")


def shape_mismatch(text: str) -> tuple[str, str, str] | None:
    """(parameter, saved shape, current shape) from a loader's error text, or None."""
    if found := _DCP_SIZE.search(text):
        return found.group(3), found.group(1), found.group(2)
    if found := _STATE_DICT_SIZE.search(text):
        return found.group(1), found.group(2), found.group(3)
    return None


def damaged_files(model_dir: Path) -> list[str]:
    """The weight files of `model_dir` that safetensors cannot open (truncated, overwritten)."""
    from safetensors import safe_open

    bad = []
    for file in sorted(model_dir.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception:  # noqa: BLE001 - any failure to open is the damage being reported
            bad.append(file.name)
    return bad


@contextmanager
def model_load_errors(model_dir: str | Path, field: str = "model.path") -> Iterator[None]:
    """Around `from_pretrained(model_dir)`: a damaged weights file becomes InputMismatch naming it."""
    try:
        yield
    except Exception as exc:
        text = str(exc)
        if not any(mark in text for mark in _DAMAGED):
            raise
        files = damaged_files(Path(model_dir)) or ["a weights file"]
        raise InputMismatch(f"{field}={model_dir}: {', '.join(files)} is damaged or truncated ({text.splitlines()[0]}); "
                            f"copy or download the model again") from exc


@contextmanager
def checkpoint_load_errors(checkpoint: str | Path) -> Iterator[None]:
    """Around loading a training checkpoint into the run's model: a shape mismatch (another model's
    checkpoint) becomes InputMismatch naming the parameter and both shapes."""
    try:
        yield
    except BaseException as exc:        # torch.distributed.checkpoint's CheckpointException is a BaseException
        found = shape_mismatch(str(exc)) if not isinstance(exc, (KeyboardInterrupt, SystemExit)) else None
        if found is None:
            raise
        name, saved, current = found
        raise InputMismatch(f"checkpoint {checkpoint}: {name} was saved as {saved} but this run's model has "
                            f"{current}: the checkpoint is of another model than model.path; resume with the "
                            f"model it was trained from (its config.yaml names it) or start afresh with "
                            f"trainer.resume=never") from exc
