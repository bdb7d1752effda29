"""Rendering a prompt (string or chat messages) into the text the policy continues.

Templates:

- ``r1_zero``: the DeepSeek-R1-Zero training template (DeepSeek-AI 2025, Table 1) with the user's text
  substituted; for base models trained from scratch on the format.
- ``chat``: the tokenizer's own chat template with ``add_generation_prompt=True``; for instruct models.
- ``none``: the raw text, for data whose prompts are already fully templated.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>. User: {prompt}. Assistant:"
)
TEMPLATES: tuple[str, ...] = ("r1_zero", "chat", "none")

Prompt = str | list[dict[str, str]]


def check_template(template: str) -> None:
    """Raise ValueError (with a did-you-mean) unless ``template`` is one of ``TEMPLATES``."""
    if template not in TEMPLATES:
        close = difflib.get_close_matches(template, TEMPLATES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown prompt template {template!r} (choose one of {', '.join(TEMPLATES)}){hint}")


def user_text(prompt: Prompt) -> str:
    """The question text: the string itself, or the user messages' contents joined by newlines.

    A message list without any user message falls back to all contents, so no text is lost.
    """
    if isinstance(prompt, str):
        return prompt
    user = [m["content"] for m in prompt if m["role"] == "user"]
    return "\n".join(user or [m["content"] for m in prompt])


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """Chat messages for ``prompt``: a string becomes one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [dict(m) for m in prompt]


@dataclass(frozen=True)
class PromptStyle:
    """How a dataset's prompts become text: the template, plus what the ``chat`` template puts around them.

    ``system_prompt`` becomes the system message of prompts that have none (SmolLM2's and Qwen's chat
    templates otherwise insert a default one). ``demonstrations`` are (question, answer) turns placed
    before the question: a small instruct model that never writes ``<answer>`` tags unprompted writes
    them in about half its samples after one worked example, which gives the accuracy reward something
    to reinforce from the first step.
    """

    template: str = "r1_zero"
    system_prompt: str = ""
    demonstrations: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        check_template(self.template)
        if (self.system_prompt or self.demonstrations) and self.template != "chat":
            raise ValueError("data.system_prompt and data.demonstrations need data.template=chat (they are chat "
                             "messages)")
        for pair in self.demonstrations:
            if len(pair) != 2 or not all(isinstance(x, str) and x for x in pair):
                raise ValueError(f"data.demonstrations: each entry must be [question, answer], two non-empty "
                                 f"strings; got {list(pair)!r}")

    def messages(self, prompt: Prompt) -> list[dict[str, str]]:
        """The chat messages of ``prompt`` with the system prompt and demonstrations added."""
        messages = as_messages(prompt)
        head = [m for m in messages if m["role"] == "system"]
        rest = [m for m in messages if m["role"] != "system"]
        if not head and self.system_prompt:
            head = [{"role": "system", "content": self.system_prompt}]
        shots = [{"role": role, "content": text} for question, answer in self.demonstrations
                 for role, text in (("user", question), ("assistant", answer))]
        return head + shots + rest

    def render(self, prompt: Prompt, tokenizer: Any) -> str:
        """The text the policy continues (see ``render_prompt``)."""
        if self.template == "chat" and (self.system_prompt or self.demonstrations):
            return render_prompt(self.messages(prompt), tokenizer, "chat")
        return render_prompt(prompt, tokenizer, self.template)


def as_style(template: str | PromptStyle) -> PromptStyle:
    """A template name is shorthand for a style with no system prompt or demonstrations."""
    return template if isinstance(template, PromptStyle) else PromptStyle(template)


def render_prompt(prompt: Prompt, tokenizer: Any, template: str) -> str:
    """Render ``prompt`` with ``template`` ("r1_zero", "chat" or "none").

    Args:
        prompt: a string or chat messages ``[{"role", "content"}]``.
        tokenizer: a Hugging Face tokenizer; only "chat" uses it (its ``apply_chat_template``).
        template: one of ``TEMPLATES``.

    Returns:
        The prompt text, ending where the model's response starts.
    """
    check_template(template)
    if template == "r1_zero":
        return R1_ZERO_TEMPLATE.format(prompt=user_text(prompt))
    if template == "chat":
        if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("template 'chat' needs a tokenizer with a chat template; use data.template=r1_zero")
        return tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] for m in prompt)
