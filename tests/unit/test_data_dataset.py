"""PromptDataset (templating, tokenizing, dropping long prompts) and the resumable PromptSampler."""

from __future__ import annotations

import pytest

from r1ray.data import DataError, PromptDataset, PromptRow, PromptSampler
from r1ray.models import build_char_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


def rows(*prompts):
    return [PromptRow(prompt=p, ground_truth="1", data_source="s", index=i) for i, p in enumerate(prompts)]


def test_items_carry_row_text_and_ids(tokenizer):
    dataset = PromptDataset(rows("abc", [{"role": "user", "content": "hi"}]), tokenizer, "chat", 64)
    assert len(dataset) == 2
    item = dataset[1]
    assert item.row.index == 1
    assert item.text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert item.prompt_ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.decode(item.prompt_ids) == item.text
    assert dataset.n_dropped == 0


def test_long_prompts_dropped_and_counted(tokenizer, caplog):
    dataset = PromptDataset(rows("a" * 5, "b" * 11, "c" * 10, "d" * 30), tokenizer, "none", max_prompt_length=10)
    assert [item.text for item in dataset.items] == ["a" * 5, "c" * 10]
    assert dataset.n_dropped == 2
    assert "dropped 2 of 4 prompts longer than max_prompt_length=10" in caplog.text


def test_no_limit_keeps_everything(tokenizer):
    assert PromptDataset(rows("x" * 500), tokenizer, "r1_zero", None).n_dropped == 0


def test_all_dropped_is_an_error(tokenizer):
    with pytest.raises(DataError, match="all 2 prompts are longer than max_prompt_length=3 tokens"):
        PromptDataset(rows("abcd", "abcdef"), tokenizer, "none", 3)


def drain(sampler, steps):
    return [sampler.next_batch() for _ in range(steps)]


def test_sampler_is_a_seeded_permutation_per_epoch():
    sampler = PromptSampler(10, 5, seed=3)
    first, second = drain(sampler, 2)
    assert sorted(first + second) == list(range(10))
    assert drain(PromptSampler(10, 5, seed=3), 2) == [first, second]
    assert drain(PromptSampler(10, 5, seed=4), 2) != [first, second]
    third = sampler.next_batch()
    assert sampler.epoch == 1
    assert third != first  # a fresh shuffle each epoch


def test_drop_last_and_short_batches():
    dropping = PromptSampler(7, 3, seed=0)
    assert dropping.steps_per_epoch == 2
    assert [len(b) for b in drain(dropping, 3)] == [3, 3, 3]
    assert dropping.epoch == 1
    keeping = PromptSampler(7, 3, seed=0, drop_last=False)
    assert keeping.steps_per_epoch == 3
    assert [len(b) for b in drain(keeping, 4)] == [3, 3, 1, 3]


def test_unshuffled_order():
    assert drain(PromptSampler(4, 2, shuffle=False), 3) == [[0, 1], [2, 3], [0, 1]]


def test_too_few_prompts_is_explained():
    with pytest.raises(ValueError, match="lower data.prompts_per_step"):
        PromptSampler(3, 8)


@pytest.mark.parametrize("steps_before", [0, 1, 3, 4, 7, 8])  # 4 steps per epoch: 4 and 8 end an epoch
def test_resume_gives_the_same_subsequent_order(steps_before):
    reference = PromptSampler(9, 2, seed=11)
    drain(reference, steps_before)
    state = reference.state_dict()
    expected = drain(reference, 6)

    resumed = PromptSampler(9, 2, seed=0)
    resumed.load_state_dict(state)
    assert drain(resumed, 6) == expected
    assert all(len(batch) == 2 for batch in expected)


def test_epoch_boundary_rolls_over_instead_of_yielding_nothing():
    sampler = PromptSampler(4, 2, seed=1)
    drain(sampler, 2)
    state = sampler.state_dict()
    assert state["epoch"] == 0 and state["position"] == 4
    resumed = PromptSampler(4, 2, seed=1)
    resumed.load_state_dict(state)
    batch = next(iter(resumed))
    assert len(batch) == 2
    assert resumed.epoch == 1
