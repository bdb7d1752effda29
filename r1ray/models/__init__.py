"""Models: the offline character tokenizer, tiny random Qwen2 models and the shared loading helpers."""

from r1ray.models.loading import DTYPES, eos_ids, load_model_and_tokenizer, load_tokenizer, resolve_dtype
from r1ray.models.tiny import SPEC_FILE, TinyModelSpec, build_tiny_model, ensure_tiny_model, is_complete_model
from r1ray.models.tokenizer import (
    CHAT_TEMPLATE,
    EOS_TOKEN,
    FORMAT_TOKENS,
    IM_END,
    IM_START,
    SPECIAL_TOKENS,
    build_char_tokenizer,
    char_vocab,
)

__all__ = [
    "CHAT_TEMPLATE",
    "DTYPES",
    "EOS_TOKEN",
    "eos_ids",
    "FORMAT_TOKENS",
    "IM_END",
    "IM_START",
    "SPECIAL_TOKENS",
    "SPEC_FILE",
    "TinyModelSpec",
    "build_char_tokenizer",
    "build_tiny_model",
    "char_vocab",
    "ensure_tiny_model",
    "is_complete_model",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "resolve_dtype",
]
