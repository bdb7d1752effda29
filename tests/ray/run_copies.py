"""A finished run's output directory copied as if the run had stopped after an earlier step: the later
checkpoints and metrics rows removed, so that `trainer.resume=auto` goes on from that step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def stopped_after(run_dir: Path, copy_dir: Path, step: int) -> Path:
    shutil.copytree(run_dir, copy_dir)
    for checkpoint in (copy_dir / "checkpoints").glob("step_*"):
        if int(checkpoint.name.split("_")[1]) > step:
            shutil.rmtree(checkpoint)
    lines = (copy_dir / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    (copy_dir / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    return copy_dir
