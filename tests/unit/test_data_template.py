"""Prompt templates: R1-Zero text, the tokenizer's chat template, and raw text."""

from __future__ import annotations

import pytest

from r1ray.data import R1_ZERO_TEMPLATE, render_prompt
from r1ray.models import build_char_tokenizer

CHAT = [{"role": "system", "content": "sys"}, {"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def test_r1_zero_matches_the_paper():
    text = render_prompt("What is 2 + 3?", None, "r1_zero")
    assert text.startswith("A conversation between User and Assistant. The user asks a question, and the Assistant")
    assert "<think> reasoning process here </think> <answer> answer here </answer>" in text
    assert text.endswith("User: What is 2 + 3?. Assistant:")
    assert text == R1_ZERO_TEMPLATE.format(prompt="What is 2 + 3?")


def test_r1_zero_uses_user_text_of_chat_messages():
    assert render_prompt(CHAT, None, "r1_zero") == render_prompt("What is 2 + 3?", None, "r1_zero")


def test_r1_zero_keeps_braces_in_prompt():
    assert "User: f(x) = {x}. Assistant:" in render_prompt("f(x) = {x}", None, "r1_zero")


def test_chat_template(tokenizer):
    assert render_prompt("hi", tokenizer, "chat") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt(CHAT, tokenizer, "chat").startswith("<|im_start|>system\nsys<|im_end|>\n")


def test_none_template():
    assert render_prompt("raw text", None, "none") == "raw text"
    assert render_prompt(CHAT, None, "none") == "sys\nWhat is 2 + 3?"


def test_unknown_template_suggests():
    with pytest.raises(ValueError, match="did you mean 'r1_zero'"):
        render_prompt("x", None, "r1zero")


def test_chat_without_tokenizer_is_explained():
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        render_prompt("x", None, "chat")
