"""Hedged answers: a final answer that offers several candidates where one answer is asked for.

A rule that compares "the last number" of an answer (arithmetic), or math-verify, which takes the last
number of an answer written in words, scores "<answer>3 or 5 or 7</answer>" 1.0 against 7: a policy
learns to list candidates with its guess last, the exploit that removing the last-number fallback
closed, moved inside the tag. So an answer must denote one answer; several alternatives score 0, unless
the ground truth is itself several (a list, set, tuple or interval), in which case the comparison of the
two decides.

What counts as several: two or more different values joined by a word or sign that offers a choice
("or", "and", "either", ``\\lor``, ``\\vee``, a spaced "|"), read at any depth ("7 (or 8)" offers two),
or by a comma or semicolon outside brackets ("3, 5, 7"; "(1, 2)" and "[1, 2)" are one tuple or
interval, "1,000" one number); or a response that boxes different answers. A value is a piece with a
digit, a fraction, root, pi or infinity, or a lone letter (a choice: "A or B"). Prose around one value
("7 apples", "x = 7, I think", "7 or more") is one answer. A "/" is division ("3/4"), never a choice.
"""

from __future__ import annotations

import re

from r1ray.rewards.extract import boxed_answers, extract_answer_tag, gsm8k_ground_truth

_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# \text{ or } and its kin: their words are prose, so they are read as such.
_TEXT_RE = re.compile(r"\\(?:text|textrm|textbf|textit|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")
_CHOICE_RE = re.compile(r"\b(?:or|and|either)\b|\\(?:lor|vee)(?![A-Za-z])|(?<=\s)\|(?=\s)", re.IGNORECASE)
_VALUE_RE = re.compile(r"\d|\\(?:d?frac|tfrac|sqrt|pi|infty)(?![A-Za-z])")
_LONE_LETTER_RE = re.compile(r"^\W*[A-Za-z]\W*$")
_SPLIT = "\x00"
_BOX_SPELLING_RE = re.compile(r"\\(?:boxed|fbox)|[{}\s]")
_OPEN, _CLOSE = "([{", ")]}"
# A ground truth with one of these names several values: "1, 2", "\{1; 2\}", "(1, 2)", "\pm 3".
_SEVERAL_GOLD_RE = re.compile(r"[,;]|\\pm(?![A-Za-z])|\\mp(?![A-Za-z])")


def _top_level_commas_split(text: str) -> str:
    """The text with each comma and semicolon outside brackets replaced by the split mark."""
    out, depth = [], 0
    for char in text:
        if char in _OPEN:
            depth += 1
        elif char in _CLOSE:
            depth = max(depth - 1, 0)      # intervals close with the other bracket: "[1, 2)"
        out.append(_SPLIT if char in ",;" and depth == 0 else char)
    return "".join(out)


def lists_several(answer: str) -> bool:
    """Whether an answer's text offers two or more different values (see the module docstring)."""
    text = _TEXT_RE.sub(r" \1 ", _THOUSANDS_RE.sub("", answer)).replace(_SPLIT, " ")
    pieces = _CHOICE_RE.sub(_SPLIT, _top_level_commas_split(text)).split(_SPLIT)
    values = {re.sub(r"\s+", "", piece) for piece in pieces
              if _VALUE_RE.search(piece) or _LONE_LETTER_RE.match(piece)}
    return len(values) > 1


def names_several(ground_truth: str) -> bool:
    """Whether a ground truth is itself several values, so that an answer may be too."""
    text = gsm8k_ground_truth(ground_truth)
    return lists_several(text) or bool(_SEVERAL_GOLD_RE.search(_THOUSANDS_RE.sub("", text)))


def hedged(response: str, answer: str, ground_truth: str) -> bool:
    """Whether `answer`, the final answer extracted from `response`, offers several candidates where the
    ground truth is one: its text lists alternatives, or the answer block (else the whole response) boxes
    different answers ("\\boxed{3} ... \\boxed{7}"; the same answer boxed twice is one)."""
    if names_several(ground_truth):
        return False
    tagged = extract_answer_tag(response)
    # Box commands, braces and spaces are dropped before comparing, so that "\boxed{\boxed{7}}" is one
    # answer and "\boxed{\boxed{3} or \boxed{7}}" three.
    boxes = {_BOX_SPELLING_RE.sub("", box) for box in boxed_answers(response if tagged is None else tagged)}
    # An answer in GSM8K's layout ("reasoning ... #### 18") states what follows the "####".
    return len(boxes) > 1 or lists_several(gsm8k_ground_truth(answer))
