"""Text extraction shared by the reward functions.

Every helper here is linear in the length of the response (str.find / str.count / one regex pass),
so adversarially long responses (megabytes of text) are cheap to score.
"""

from __future__ import annotations

import re
from typing import Optional

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
_R1_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

_BOX_COMMANDS = ("\\boxed", "\\fbox")
# A truncated response often ends inside an unclosed \boxed{; look a few boxes back, not all of
# them, so that a response made of thousands of unclosed boxes stays linear.
_MAX_BOX_ATTEMPTS = 3
# Boxes read when looking for several boxed answers; a bound, so that scanning stays linear.
_MAX_BOXES_READ = 16

# "1,234" and "-3.5" are one number each; "1, 2" is two.
_BRACE_RE = re.compile(r"[{}]")
_NUMBER_RE = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def split_think_answer(response: str, think_prefilled: bool = False) -> Optional[tuple[str, str]]:
    """Return (reasoning, answer) when the response has the R1 layout, else None.

    The R1 layout is ``<think>reasoning</think><answer>answer</answer>`` with exactly one of each
    tag, in that order, only whitespace outside and between the blocks, and non-empty content.

    Args:
        response: the generated text.
        think_prefilled: the prompt already ended with ``<think>`` (the R1-Zero template
            "Assistant: <think>"), so the response may start directly with the reasoning. A response
            that repeats the opening tag is accepted too.
    """
    text = response
    if think_prefilled and not text.lstrip().startswith(THINK_OPEN):
        text = THINK_OPEN + text
    if any(text.count(tag) != 1 for tag in _R1_TAGS):
        return None
    think_at, think_end, answer_at, answer_end = (text.find(tag) for tag in _R1_TAGS)
    if not think_at < think_end < answer_at < answer_end:
        return None
    outside = (
        text[:think_at],
        text[think_end + len(THINK_CLOSE) : answer_at],
        text[answer_end + len(ANSWER_CLOSE) :],
    )
    if any(part.strip() for part in outside):
        return None
    think = text[think_at + len(THINK_OPEN) : think_end].strip()
    answer = text[answer_at + len(ANSWER_OPEN) : answer_end].strip()
    if not think or not answer:
        return None
    return think, answer


def extract_answer_tag(response: str) -> Optional[str]:
    """Content (stripped) of the last complete ``<answer>...</answer>`` block, or None."""
    end = response.rfind(ANSWER_CLOSE)
    if end < 0:
        return None
    start = response.rfind(ANSWER_OPEN, 0, end)
    if start < 0:
        return None
    return response[start + len(ANSWER_OPEN) : end].strip()


def reasoning_text(response: str) -> str:
    """The ``<think>`` section when there is one (closed or not), else the whole response."""
    start = response.find(THINK_OPEN)
    start = 0 if start < 0 else start + len(THINK_OPEN)
    # R1-Zero prompts prefill "<think>", so a response may hold only the closing tag; then the
    # reasoning is everything before it.
    end = response.find(THINK_CLOSE, start)
    return response[start:] if end < 0 else response[start:end]


def _braced_content(text: str, open_at: int) -> Optional[str]:
    """Content of the brace group opening at ``text[open_at] == '{'``, or None if unbalanced."""
    depth = 0
    for brace in _BRACE_RE.finditer(text, open_at):
        depth += 1 if brace.group(0) == "{" else -1
        if depth == 0:
            return text[open_at + 1 : brace.start()]
    return None


def last_boxed(text: str) -> Optional[str]:
    """Content of the last balanced ``\\boxed{...}`` or ``\\fbox{...}``, nested braces included."""
    end = len(text)
    for _ in range(_MAX_BOX_ATTEMPTS):
        found = max((text.rfind(cmd, 0, end), cmd) for cmd in _BOX_COMMANDS)
        at, cmd = found
        if at < 0:
            return None
        brace = at + len(cmd)
        while brace < len(text) and text[brace] == " ":
            brace += 1
        if brace < len(text) and text[brace] == "{":
            content = _braced_content(text, brace)
            if content is not None:
                return content.strip()
        end = at
    return None


def boxed_answers(text: str) -> list[str]:
    """Contents (stripped) of the balanced ``\\boxed{}`` / ``\\fbox{}`` groups among the last
    ``_MAX_BOXES_READ`` box commands, in order of their commands; a box inside another is read too,
    unbalanced ones are left out."""
    opens: list[tuple[int, int]] = []            # (command start, its "{"), the last box first
    end = len(text)
    for _ in range(_MAX_BOXES_READ):
        at, cmd = max((text.rfind(cmd, 0, end), cmd) for cmd in _BOX_COMMANDS)
        if at < 0:
            break
        brace = at + len(cmd)
        while brace < len(text) and text[brace] == " ":
            brace += 1
        if brace < len(text) and text[brace] == "{":
            opens.append((at, brace))
        end = at
    if not opens:
        return []
    closes = _closing_braces(text, opens[-1][1], {brace for _, brace in opens})
    return [text[brace + 1 : closes[brace]].strip() for _, brace in reversed(opens) if brace in closes]


def _closing_braces(text: str, start: int, wanted: set[int]) -> dict[int, int]:
    """Where each "{" at a position in `wanted` is closed, in one pass from `start` (nested boxes are
    not read again for each box)."""
    closes: dict[int, int] = {}
    stack: list[int] = []
    for brace in _BRACE_RE.finditer(text, start):
        if brace.group(0) == "{":
            stack.append(brace.start())
        elif stack:
            opened = stack.pop()
            if opened in wanted:
                closes[opened] = brace.start()
    return closes


def last_number(text: str) -> Optional[str]:
    """The last number in the text, thousands separators removed ("1,234" -> "1234"); or None."""
    last = None
    for last in _NUMBER_RE.finditer(text):  # noqa: B007 - the loop only runs to the last match
        pass
    return None if last is None else last.group(0).replace(",", "")


def numbers_in(text: str) -> list[str]:
    """The numbers in the text, in order, thousands separators removed ("1,234 or 5" -> ["1234", "5"])."""
    return [match.group(0).replace(",", "") for match in _NUMBER_RE.finditer(text)]


def has_final_answer(response: str) -> bool:
    """Whether the response commits to an answer: an ``<answer>`` block or a ``\\boxed{}``."""
    return extract_answer_tag(response) is not None or last_boxed(response) is not None


def extract_final_answer(response: str, number_fallback: bool = True) -> Optional[str]:
    """The response's final answer: ``<answer>`` content, else the last ``\\boxed{}``, else the
    last number (only when ``number_fallback``)."""
    tagged = extract_answer_tag(response)
    if tagged is not None:
        return tagged
    boxed = last_boxed(response)
    if boxed is not None:
        return boxed
    return last_number(response) if number_fallback else None


def gsm8k_ground_truth(ground_truth: str) -> str:
    """The final answer of a GSM8K solution ("... #### 1,234" -> "1234"); other text stripped."""
    if "####" in ground_truth:
        return ground_truth.rsplit("####", 1)[1].strip().replace(",", "")
    return ground_truth.strip()
