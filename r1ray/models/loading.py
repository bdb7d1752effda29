"""Load a causal LM and its tokenizer the way every r1ray role does, for tiny and real checkpoints alike."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map a config dtype name ("float32", "bfloat16", "float16") or a torch dtype to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_tokenizer(path: str | os.PathLike, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained(path)``, with pad set to eos when the checkpoint has no pad token.

    Batched generation and packing need a pad id; Llama-style checkpoints ship without one.
    """
    tokenizer = AutoTokenizer.from_pretrained(os.fspath(path), trust_remote_code=trust_remote_code)
    if not tokenizer("Hello, world 123")["input_ids"]:
        # transformers builds an empty tokenizer (no vocabulary) for a directory without tokenizer files;
        # every prompt would encode to nothing and the run would fail much later.
        files = sorted(p.name for p in Path(path).glob("*token*")) if Path(path).is_dir() else []
        raise ValueError(f"{path}: the tokenizer encodes text to no tokens (tokenizer files here: "
                         f"{', '.join(files) or 'none'}); copy tokenizer.json and tokenizer_config.json from the "
                         f"original checkpoint into this directory")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        logger.info("tokenizer at %s has no pad token; using eos %r", path, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(
    path: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` from a Hugging Face model directory with the Auto classes.

    Args:
        path: model directory (a tiny model from ``build_tiny_model`` or a user's Qwen checkpoint).
        dtype: parameter dtype, a name from ``DTYPES`` or a torch dtype.
        attn_implementation: "eager", "sdpa" or "flash_attention_2".
        trust_remote_code: allow modelling code shipped with the checkpoint.

    Returns:
        The model in eval mode on CPU, and its tokenizer.
    """
    from r1ray.models.load_errors import model_load_errors

    with model_load_errors(path):
        model = AutoModelForCausalLM.from_pretrained(
            os.fspath(path),
            dtype=resolve_dtype(dtype),
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
    model.eval()
    return model, load_tokenizer(path, trust_remote_code=trust_remote_code)


def eos_ids(model_path: str | os.PathLike, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Token ids that end a response: the generation config's eos ids (Qwen lists several) plus the
    tokenizer's eos. Every rollout engine stops on exactly these."""
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:                       # no generation_config.json: the tokenizer's eos alone
        eos = None
    ids = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
