"""The offline character tokenizer: round trip, single-id special and format tokens, chat template."""

from __future__ import annotations

import string

import pytest
from transformers import AutoTokenizer

from r1ray.models import FORMAT_TOKENS, SPECIAL_TOKENS, build_tiny_model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    # Loaded from a full model directory, so AutoTokenizer sees config.json (model_type qwen2) exactly
    # as it does for a real Qwen checkpoint.
    path = build_tiny_model(tmp_path_factory.mktemp("tok") / "tiny", hidden=16, layers=1, heads=2, kv_heads=1)
    return AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("text", [
    string.printable,
    "  leading and trailing spaces  ",
    "line one\n\nline three\twith tab\n",
    "What is 37 + 85?\n<think> 37+85 = 122 </think> <answer>122</answer>",
    "{}[]()<>|\\/'\"`~!@#$%^&*_-=+;:,.?",
])
def test_round_trip_printable_ascii(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_one_token_per_ascii_character(tokenizer):
    text = "ab c\n\t~"
    assert len(tokenizer.encode(text, add_special_tokens=False)) == len(text)


def test_non_ascii_falls_back_to_bytes_and_round_trips(tokenizer):
    text = "café ≈ 3€"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token is None


def test_special_and_format_tokens_are_single_ids(tokenizer):
    for token in SPECIAL_TOKENS + FORMAT_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert ids == [tokenizer.convert_tokens_to_ids(token)], token
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 0


def test_format_tokens_survive_skip_special_tokens(tokenizer):
    ids = tokenizer.encode("<|im_start|><think>x</think><answer>1</answer><|endoftext|>", add_special_tokens=False)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<think>x</think><answer>1</answer>"


def test_pad_and_eos(tokenizer):
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 0
    assert tokenizer.bos_token is None


def test_chat_template_is_qwen_style(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    plain = tokenizer.apply_chat_template(messages[1:], tokenize=False, add_generation_prompt=False)
    assert plain == "<|im_start|>user\nHi<|im_end|>\n"


def test_vocabulary_order(tokenizer):
    vocab = tokenizer.get_vocab()
    assert [vocab[t] for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert tokenizer.encode("\t\n !~", add_special_tokens=False) == [3, 4, 5, 6, 5 + 126 - 32]
    assert len(tokenizer) == 3 + 256 + len(FORMAT_TOKENS)


def test_a_model_directory_without_tokenizer_files_is_refused(tmp_path) -> None:
    """transformers builds an empty tokenizer for it, which encodes every prompt to nothing."""
    import shutil

    from r1ray.models import build_tiny_model, load_tokenizer

    model = build_tiny_model(tmp_path / "m", hidden=32, layers=1, heads=2, kv_heads=1)
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        shutil.copy(model / name, bare / name)
    with pytest.raises(ValueError, match="the tokenizer encodes text to no tokens .tokenizer files here: none.; copy"):
        load_tokenizer(bare)
    assert load_tokenizer(model)("Hello")["input_ids"]
