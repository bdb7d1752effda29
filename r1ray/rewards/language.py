"""Language-consistency reward of DeepSeek-R1 (Guo et al. 2025, §2.3.2): the share of the
reasoning written in the target language, to discourage mixing languages in the chain of thought.

The text scored is the ``<think>`` section, or the whole response when there is none. The target is
``extra["language"]`` ("en" by default; "en" and "zh" are supported, others are unscorable).

Heuristic (no language model involved, so it is fast and deterministic):

- the text is cut into tokens: every CJK character is one token (Chinese has no spaces, and one
  character is roughly one word); every run of other letters is one token; digits, punctuation and
  LaTeX commands' backslashes are ignored;
- "en": the share of tokens that are purely ASCII letters (words in other scripts, accented words
  and CJK characters count against it);
- "zh": the share of tokens that are CJK characters (ASCII words such as variable names count
  against it, as in R1 the reward is a proportion of words).

Returns a value in [0, 1], or None when the text has no tokens.
"""

from __future__ import annotations

import logging
import re
from typing import Optional

from r1ray.rewards.base import reward_fn
from r1ray.rewards.extract import reasoning_text

logger = logging.getLogger(__name__)

# CJK Unified Ideographs (+ extension A), Hiragana/Katakana, Hangul syllables and CJK
# compatibility ideographs: scripts written without spaces between words.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W\d_])+")
# An ASCII word is a whole token: an ASCII letter run with no non-CJK letter (such as "é") on
# either side; a CJK neighbour is a token of its own.
_OTHER_LETTER = rf"(?![{_CJK}])[^\W\d_]"
_ASCII_WORD_RE = re.compile(rf"(?<!{_OTHER_LETTER})[A-Za-z]+(?!{_OTHER_LETTER})")
_HAN_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_TARGET_RE = {"en": _ASCII_WORD_RE, "zh": _HAN_RE}

SUPPORTED_LANGUAGES = tuple(_TARGET_RE)


def _count(pattern: re.Pattern[str], text: str) -> int:
    # Counting in a generator keeps memory flat on megabyte-long responses.
    return sum(1 for _ in pattern.finditer(text))


@reward_fn
def language_reward(response: str, ground_truth: str, extra: dict) -> Optional[float]:
    """Share in [0, 1] of reasoning tokens in ``extra["language"]``; None if there are no tokens
    or the language is not supported. The ground truth is unused."""
    # "zh-CN" and "en_US" name the same scripts as "zh" and "en".
    language = re.split(r"[-_]", str(extra.get("language", "en")).lower(), maxsplit=1)[0]
    if language not in SUPPORTED_LANGUAGES:
        logger.debug("language: unsupported target language %r", language)
        return None
    text = reasoning_text(response)
    total = _count(_TOKEN_RE, text)
    if total == 0:
        return None
    return _count(_TARGET_RE[language], text) / total
