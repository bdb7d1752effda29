"""data.system_prompt and data.demonstrations: chat messages placed around every prompt, validated once."""

from __future__ import annotations

import pytest

from r1ray.config_load import load_config
from r1ray.config_checks import prompt_style
from r1ray.data.template import PromptStyle


class ChatML:
    """Enough of a tokenizer for render_prompt: a ChatML template that, like SmolLM2's and Qwen's, adds a
    default system message when the first message is not one."""

    chat_template = "chatml"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        if messages[0]["role"] != "system":
            messages = [{"role": "system", "content": "DEFAULT"}] + messages
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def test_the_system_prompt_and_demonstrations_come_before_the_question():
    style = PromptStyle("chat", "Answer in tags.", (("What is 1 + 1?", "<answer>2</answer>"),))
    text = style.render([{"role": "user", "content": "What is 2 + 3?"}], ChatML())
    assert text == ("<|im_start|>system\nAnswer in tags.<|im_end|>\n"
                    "<|im_start|>user\nWhat is 1 + 1?<|im_end|>\n<|im_start|>assistant\n<answer>2</answer><|im_end|>\n"
                    "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")


def test_a_prompt_with_its_own_system_message_keeps_it():
    style = PromptStyle("chat", "ours", (("q", "a"),))
    messages = style.messages([{"role": "system", "content": "theirs"}, {"role": "user", "content": "x"}])
    assert [m["content"] for m in messages] == ["theirs", "q", "a", "x"]


def test_without_either_the_chat_template_renders_the_prompt_unchanged():
    prompt = [{"role": "user", "content": "x"}]
    assert PromptStyle("chat").render(prompt, ChatML()) == ChatML().apply_chat_template(prompt)
    assert PromptStyle("none").render("raw text", None) == "raw text"


@pytest.mark.parametrize("overrides, message", [
    (["data.template=r1_zero", "data.system_prompt=be brief"], "need data.template=chat"),
    (["data.template=chat", "data.demonstrations=[[only a question]]"], "each entry must be \\[question, answer\\]"),
    (["data.template=chat", "data.demonstrations=[[q, '']]"], "each entry must be \\[question, answer\\]"),
])
def test_bad_styles_are_refused_at_load_time_naming_the_field(tmp_path, overrides, message):
    from r1ray.config_load import ConfigError

    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{path: {tmp_path}}}\ndata: {{generate: {{task: arithmetic}}}}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(config, overrides)


def test_the_shipped_smollm2_config_has_a_valid_style():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "smollm2_135m_arithmetic.yaml")
    style = prompt_style(cfg.data)
    assert style.template == "chat" and style.system_prompt and len(style.demonstrations) == 1
    question, answer = style.demonstrations[0]
    assert "<think>" in answer and "<answer>71</answer>" in answer and "23 + 48" in question
