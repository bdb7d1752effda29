"""Writing full weights as a Hugging Face model directory, atomically (never a half-written model)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Mapping

import torch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json", ".bin.index.json")


def copy_model_files(src: Path, dest: Path) -> None:
    """Config, generation config and tokenizer files of `src`: everything but weights."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_file() and not item.name.endswith(WEIGHT_SUFFIXES) and not (dest / item.name).exists():
            shutil.copy2(item, dest / item.name)


def write_hf_model(weights: Mapping[str, torch.Tensor], files_from: Path, out: Path) -> Path:
    """A model built from `files_from`'s config, loaded with `weights`, saved to `out` with its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(files_from)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dict(weights), strict=False)
    missing = set(model.state_dict()) - set(weights)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if missing - tied:
        raise ValueError(f"weights for {sorted(missing - tied)[:5]} missing; cannot write a complete model")
    check_replaceable(out)
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    copy_model_files(files_from, tmp)
    (tmp / EXPORT_MARKER).write_text(json.dumps({"written_by": "r1ray", "from": str(files_from)}) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


# Written into every model directory r1ray exports: only such a directory (or an empty one) is replaced.
EXPORT_MARKER = "r1ray_export.json"


def check_replaceable(out: Path) -> None:
    """Refuse to replace anything but an empty directory or an earlier r1ray export: `out` may be a user's
    own model or folder, and replacing it would delete their files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"{out}: exists and is a file, not a directory; choose another output directory")
    if any(out.iterdir()) and not (out / EXPORT_MARKER).is_file():
        raise ValueError(f"{out}: exists, is not empty and was not written by r1ray export; nothing was "
                         f"written (choose a new or empty output directory, or remove it yourself)")
