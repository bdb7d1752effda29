"""`r1ray export CKPT --out DIR`: a checkpoint's sharded actor weights -> a Hugging Face model directory.

Runs in one process without a process group. FSDP2 checkpoints (torch.distributed.checkpoint, a
`.metadata` file) are read shard by shard into a model built from the checkpoint's saved config;
DeepSpeed checkpoints (`*mp_rank_00_model_states.pt` + per-rank ZeRO optimizer shards) go through
DeepSpeed's own `get_fp32_state_dict_from_zero_checkpoint`, which reassembles the float32 master weights.
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
    engine_dir = checkpoint / "actor" / "engine"
    # ZeRO-2 writes mp_rank_00_model_states.pt, ZeRO-3 one zero_pp_rank_R_mp_rank_00_model_states.pt per rank.
    if any(engine_dir.glob("*mp_rank_00_model_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # write_hf_model ties a missing lm_head back to the embedding, as the checkpoint stored it once.
        weights = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint / "actor"), tag="engine")
        return write_hf_model(weights, hf, out)
    skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(hf), dtype=torch.float32)
    state = {"model": skeleton.state_dict()}
    dcp.load(state, checkpoint_id=str(engine_dir))
    return write_hf_model(state["model"], hf, out)
