"""CurriculumSource: prompts from the current difficulty level, moving up on a schedule or on training
accuracy, and a state that resumes the same level and data order (also from a plain PromptSampler state).

The trainer's order of calls is reproduced by `run`: draw the step's batch, then observe its accuracy."""

from __future__ import annotations

import json

import pytest

from r1ray.data import PromptDataset, PromptRow, PromptSampler
from r1ray.data.curriculum import CurriculumRule, CurriculumSource
from r1ray.models import build_char_tokenizer

BATCH = 2


@pytest.fixture(scope="module")
def levels():
    """Three levels of 6 prompts; each prompt's text names its level, so a batch shows where it came from."""
    tokenizer = build_char_tokenizer()
    return [PromptDataset([PromptRow(prompt=f"L{level} q{i}", ground_truth="1", data_source="s", index=i)
                           for i in range(6)], tokenizer, "none", None)
            for level in range(3)]


def source(levels, rule=CurriculumRule(), seed=0):
    return CurriculumSource(levels, BATCH, seed=seed, shuffle=True, rule=rule)


def run(src: CurriculumSource, steps: range, accuracy=lambda step: 0.0) -> list[list[str]]:
    """Steps as the trainer runs them; returns each step's prompt texts."""
    drawn = []
    for step in steps:
        drawn.append([item.text for item in src.next_batch()])
        src.observe(step, accuracy(step))
    return drawn


def level_of(batch: list[str]) -> int:
    levels = {int(text[1]) for text in batch}
    assert len(levels) == 1, batch
    return levels.pop()


def test_one_level_is_plain_epoch_shuffled_sampling(levels):
    src = CurriculumSource(levels[:1], BATCH, seed=3, shuffle=True,
                           rule=CurriculumRule(advance_at_steps=(2,), advance_at_accuracy=0.1, window=1))
    plain = PromptSampler(6, BATCH, seed=3, shuffle=True)
    drawn = run(src, range(1, 8), accuracy=lambda step: 1.0)
    assert drawn == [[levels[0][i].text for i in plain.next_batch()] for _ in range(7)]
    assert src.level == 0 and src.metrics() == {"curriculum/level": 0.0}


def test_schedule_moves_up_at_the_given_steps_and_stops_at_the_last_level(levels):
    src = source(levels, CurriculumRule(advance_at_steps=(3, 5)))
    drawn = run(src, range(1, 10))
    # Level i+1 starts at step advance_at_steps[i] (1-based): steps 1-2 level 0, 3-4 level 1, 5+ level 2.
    assert [level_of(batch) for batch in drawn] == [0, 0, 1, 1, 2, 2, 2, 2, 2]
    assert src.metrics() == {"curriculum/level": 2.0}


def test_schedule_past_the_last_level_is_ignored(levels):
    src = source(levels[:2], CurriculumRule(advance_at_steps=(2, 3, 4)))
    assert [level_of(batch) for batch in run(src, range(1, 7))] == [0, 1, 1, 1, 1, 1]
    assert src.level == 1


def test_accuracy_moves_up_only_after_a_full_window_at_the_threshold(levels):
    src = source(levels, CurriculumRule(advance_at_accuracy=0.5, window=3))
    accuracy = {1: 1.0, 2: 1.0, 3: 0.0,          # level 0: no full window until step 3; mean 0.67
                4: 0.0, 5: 1.0, 6: 0.25, 7: 1.0}  # level 1: fresh window; 0.42 at step 6, 0.75 at step 7
    drawn = run(src, range(1, 16), accuracy=lambda step: accuracy.get(step, 1.0))
    assert [level_of(batch) for batch in drawn] == [0, 0, 0, 1, 1, 1, 1] + [2] * 8
    assert src.level == 2     # the last level: high accuracy afterwards changes nothing


@pytest.mark.parametrize("accuracy, expected", [(0.75, [0, 0, 1, 1, 2, 2, 2, 2]), (0.5, [0] * 8)])
def test_accuracy_threshold_is_inclusive(levels, accuracy, expected):
    src = source(levels, CurriculumRule(advance_at_accuracy=0.75, window=2))
    drawn = run(src, range(1, 9), accuracy=lambda step: accuracy)
    assert [level_of(batch) for batch in drawn] == expected


def test_accuracy_off_by_default(levels):
    src = source(levels)
    assert {level_of(batch) for batch in run(src, range(1, 8), accuracy=lambda step: 1.0)} == {0}


@pytest.mark.parametrize("split", [2, 4, 5])
def test_state_resumes_the_same_level_window_and_order(levels, split):
    rule = CurriculumRule(advance_at_steps=(4,), advance_at_accuracy=0.5, window=3)
    accuracy = lambda step: 0.2 if step < 5 else 0.7   # noqa: E731
    straight = source(levels, rule, seed=11)
    expected = run(straight, range(1, 13), accuracy)

    first = source(levels, rule, seed=11)
    before = run(first, range(1, split + 1), accuracy)
    state = json.loads(json.dumps(first.state_dict()))    # checkpoints store it as JSON
    resumed = source(levels, rule, seed=11)
    resumed.load_state_dict(state)
    assert resumed.level == first.level and list(resumed.recent) == list(first.recent)
    after = run(resumed, range(split + 1, 13), accuracy)
    assert before + after == expected
    assert resumed.level == straight.level == 2


def test_loads_a_plain_prompt_sampler_state(levels):
    """A checkpoint written without a curriculum holds one PromptSampler's state; it resumes level 0."""
    plain = PromptSampler(6, BATCH, seed=5, shuffle=True)
    for _ in range(4):   # into the second epoch
        plain.next_batch()
    src = CurriculumSource(levels[:1], BATCH, seed=99, shuffle=True)
    src.load_state_dict(json.loads(json.dumps(plain.state_dict())))
    assert src.level == 0
    assert [item.text for item in src.next_batch()] == [levels[0][i].text for i in plain.next_batch()]
