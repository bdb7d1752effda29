"""Evaluation and data-filtering building blocks, all pure functions (no Ray, no model):

- :mod:`~r1ray.evaluation.passk`: pass@k (Chen et al. 2021), maj@k (DeepSeek-R1), answer
  extraction for voting, per-data-source summaries;
- :mod:`~r1ray.evaluation.behaviour`: reflection / verification / correction word rates;
- :mod:`~r1ray.evaluation.filters`: DeepSeek-R1's rejection-sampling filters for SFT data.
"""

from r1ray.evaluation.behaviour import DEFAULT_BEHAVIOUR_WORDS, behaviour_rates, count_behaviour_words
from r1ray.evaluation.filters import (
    FilterStats,
    dedupe,
    filter_sft_rows,
    has_repetition_loop,
    is_mixed_language,
    is_unreadable,
    normalize_text,
)
from r1ray.evaluation.passk import (
    EvalGroup,
    extract_final_answer,
    majority_vote,
    metric_source_name,
    normalize_answer,
    pass_at_k,
    summarize,
)

__all__ = [
    "DEFAULT_BEHAVIOUR_WORDS",
    "EvalGroup",
    "FilterStats",
    "behaviour_rates",
    "count_behaviour_words",
    "dedupe",
    "extract_final_answer",
    "filter_sft_rows",
    "has_repetition_loop",
    "is_mixed_language",
    "is_unreadable",
    "majority_vote",
    "metric_source_name",
    "normalize_answer",
    "normalize_text",
    "pass_at_k",
    "summarize",
]
