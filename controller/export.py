"""`r1ray export CKPT --out DIR`: a checkpoint's sharded actor weights -> a Hugging Face model directory.

Runs in one process without a process group: torch.distributed.checkpoint reads every shard and
reassembles full tensors into a model built from the checkpoint's saved config.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp


def export_checkpoint(checkpoint: Path, out: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    from r1ray.controller.checkpoint import read_checkpoint

    read_checkpoint(checkpoint)  # refuses incomplete checkpoints with a clear message
    hf = checkpoint / "hf"
    config = AutoConfig.from_pretrained(hf)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(checkpoint / "actor" / "engine"))
    model.load_state_dict(state["model"])
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for item in hf.iterdir():
        if not (tmp / item.name).exists():
            shutil.copy2(item, tmp / item.name)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
