"""A character-level tokenizer for tiny models, built offline and saved as a Qwen2 tokenizer.

The vocabulary is a Qwen2-style byte-level BPE with no merges, so every ASCII character is exactly one
token and the saved files load through ``AutoTokenizer.from_pretrained`` along the very same code path
as a real Qwen checkpoint (transformers 5 rebuilds Qwen2 tokenizers from ``vocab``/``merges`` with a
fixed byte-level pipeline, so only a byte-level vocabulary survives that round trip unchanged).

Ids, in order:

- ``<|endoftext|>`` (0, eos and pad), ``<|im_start|>`` (1), ``<|im_end|>`` (2): special tokens;
- ``"\\t"``, ``"\\n"`` and the printable ASCII characters ``" "`` .. ``"~"``: one token per character;
- the other 161 byte values: non-ASCII text falls back to its UTF-8 bytes, so there is no unknown
  token at all (like Qwen, ``unk_token`` is None) and decoding round-trips any string;
- ``<think>``, ``</think>``, ``<answer>``, ``</answer>``: regular added tokens, one id each, so the
  R1 format is learnable by a tiny model and survives ``skip_special_tokens=True``.
"""

from __future__ import annotations

import logging

from tokenizers import AddedToken
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (EOS_TOKEN, IM_START, IM_END)
FORMAT_TOKENS: tuple[str, ...] = ("<think>", "</think>", "<answer>", "</answer>")

# Qwen's chat layout without its default system prompt: a tiny model has no use for it, and
# leaving it out keeps rendered prompts short.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _byte_order() -> list[int]:
    """Byte values in id order: tab, newline, printable ASCII, then every other byte."""
    first = [ord("\t"), ord("\n")] + list(range(32, 127))
    return first + [b for b in range(256) if b not in set(first)]


def char_vocab() -> dict[str, int]:
    """The base vocabulary (special tokens and the 256 byte-level symbols) as token -> id."""
    byte_symbol = bytes_to_unicode()
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for byte in _byte_order():
        vocab[byte_symbol[byte]] = len(vocab)
    return vocab


def build_char_tokenizer(model_max_length: int = 1024) -> Qwen2Tokenizer:
    """Build the character-level tokenizer in memory (see the module docstring for the ids).

    Args:
        model_max_length: longest sequence the paired model accepts; stored in the tokenizer config.

    Returns:
        A Qwen2 tokenizer with eos/pad set, the format tags as single tokens and a Qwen-style
        chat template. Save it with ``save_pretrained``.
    """
    tokenizer = Qwen2Tokenizer(
        vocab=char_vocab(),
        merges=[],
        unk_token=None,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in FORMAT_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
