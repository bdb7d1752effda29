"""`r1ray export CKPT --out DIR`: a checkpoint's sharded actor weights -> a Hugging Face model directory.

Runs in one process without a process group: torch.distributed.checkpoint reads every shard and
reassembles full tensors into a model built from the checkpoint's saved config.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from r1ray.models.export import check_replaceable, write_hf_model


def export_checkpoint(checkpoint: Path, out: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    from r1ray.controller.checkpoint import read_checkpoint

    check_replaceable(out)       # before any work: never replace a directory r1ray did not write
    read_checkpoint(checkpoint)  # refuses incomplete checkpoints with a clear message
    hf = checkpoint / "hf"
    skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(hf), dtype=torch.float32)
    state = {"model": skeleton.state_dict()}
    dcp.load(state, checkpoint_id=str(checkpoint / "actor" / "engine"))
    return write_hf_model(state["model"], hf, out)
