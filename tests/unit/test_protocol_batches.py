"""The batch protocol: packing, split/concat/select over every batch type, response views, token budgets,
balanced micro-batches, and pickling (Ray moves batches with pickle)."""

from __future__ import annotations

import pickle
from dataclasses import fields

import pytest
import torch

from r1ray.protocol import (
    PromptBatch,
    RolloutBatch,
    TrainBatch,
    chunk_rows,
    concat_batches,
    length_mask,
    pack,
    pad_right,
    select_rows,
    split_batch,
    unpack,
)
from r1ray.workers.engines.packing import balanced_chunks

# Hand-made sequences: (prompt, response) token lists of different lengths, two groups of n=2.
PROMPTS = [[1, 2, 3], [1, 2, 3], [4, 5], [4, 5]]
RESPONSES = [[10, 11], [12, 13, 14, 15], [16], [17, 18, 19]]


def rollout_batch(prompts=PROMPTS, responses=RESPONSES, group_size: int = 2) -> RolloutBatch:
    tokens, cu = pack([p + r for p, r in zip(prompts, responses)])
    lp = pad_right([-0.1 * torch.arange(1, len(r) + 1, dtype=torch.float32) for r in responses])
    return RolloutBatch(
        tokens=tokens, cu_seqlens=cu,
        prompt_lens=torch.tensor([len(p) for p in prompts]),
        truncated=torch.tensor([len(r) == 4 for r in responses]),
        rollout_logprobs=lp,
        response_texts=[" ".join(map(str, r)) for r in responses],
        ground_truths=[f"gt{i // group_size}" for i in range(len(prompts))],
        data_sources=["arithmetic"] * len(prompts),
        extra_infos=[{"row": i} for i in range(len(prompts))],
        group_size=group_size,
    )


def train_batch(optional: bool = True) -> TrainBatch:
    rollout = rollout_batch()
    mask = rollout.response_mask()
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None] * mask
    lp = rollout.rollout_logprobs
    return TrainBatch(tokens=rollout.tokens, cu_seqlens=rollout.cu_seqlens, prompt_lens=rollout.prompt_lens,
                      response_mask=mask, advantages=adv,
                      old_logprobs=lp - 0.01 if optional else None,
                      ref_logprobs=None,
                      rollout_logprobs=lp if optional else None)


def prompt_batch(n: int = 5) -> PromptBatch:
    return PromptBatch(prompt_ids=[list(range(i + 1)) for i in range(n)], ground_truths=[str(i) for i in range(n)],
                       data_sources=["math"] * n, extra_infos=[{"i": i} for i in range(n)], indices=list(range(n)))


def assert_batches_equal(a, b) -> None:
    assert type(a) is type(b)
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            assert isinstance(y, torch.Tensor), f.name
            assert x.dtype == y.dtype and torch.equal(x, y), f.name
        else:
            assert x == y, f.name


def sequences(batch) -> list[list[int]]:
    return [s.tolist() for s in unpack(batch.tokens, batch.cu_seqlens)]


# ---- pack / unpack / padding -----------------------------------------------------------------------


def test_pack_unpack_round_trip() -> None:
    seqs = [[5, 6, 7], [], [8], [9, 10]]
    tokens, cu = pack(seqs)
    assert tokens.dtype == torch.int64 and cu.dtype == torch.int64
    assert tokens.tolist() == [5, 6, 7, 8, 9, 10]
    assert cu.tolist() == [0, 3, 3, 4, 6]
    assert [t.tolist() for t in unpack(tokens, cu)] == seqs
    empty_tokens, empty_cu = pack([])
    assert empty_tokens.numel() == 0 and empty_cu.tolist() == [0]
    assert unpack(empty_tokens, empty_cu) == []


def test_pad_right_and_length_mask() -> None:
    out = pad_right([torch.tensor([1.0, 2.0]), torch.tensor([3.0])], value=-1.0)
    assert out.tolist() == [[1.0, 2.0], [3.0, -1.0]]
    assert pad_right([torch.tensor([1, 2])], width=4).tolist() == [[1, 2, 0, 0]]
    assert length_mask(torch.tensor([0, 2, 3]), 3).tolist() == [[0, 0, 0], [1, 1, 0], [1, 1, 1]]


# ---- RolloutBatch views ----------------------------------------------------------------------------


def test_rollout_response_views_on_a_hand_built_batch() -> None:
    batch = rollout_batch()
    assert len(batch) == 4
    assert batch.response_lens.tolist() == [2, 4, 1, 3]
    assert batch.rollout_logprobs.shape == (4, 4)
    assert batch.response_mask().tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]]
    assert batch.response_mask().dtype == torch.float32
    ids = batch.response_ids()
    assert ids.dtype == torch.int64
    assert ids.tolist() == [[10, 11, 0, 0], [12, 13, 14, 15], [16, 0, 0, 0], [17, 18, 19, 0]]
    # The logprob padding sits exactly where the mask is zero.
    assert torch.equal(batch.rollout_logprobs != 0, batch.response_mask().bool())


def test_train_batch_seq_lens() -> None:
    assert train_batch().seq_lens.tolist() == [5, 7, 3, 5]


# ---- split / concat / select ----------------------------------------------------------------------


@pytest.mark.parametrize("parts", [1, 2, 4])
def test_rollout_split_concat_round_trip(parts: int) -> None:
    batch = rollout_batch()
    pieces = split_batch(batch, parts)
    assert [len(p) for p in pieces] == [4 // parts] * parts
    for piece in pieces:                         # each part is self-consistent
        assert int(piece.cu_seqlens[0]) == 0 and int(piece.cu_seqlens[-1]) == piece.tokens.numel()
        assert piece.group_size == 2
    assert_batches_equal(concat_batches(pieces), batch)


def test_split_keeps_groups_and_rows_in_order() -> None:
    first, second = split_batch(rollout_batch(), 2)
    assert sequences(first) == [p + r for p, r in zip(PROMPTS[:2], RESPONSES[:2])]
    assert sequences(second) == [p + r for p, r in zip(PROMPTS[2:], RESPONSES[2:])]
    assert first.ground_truths == ["gt0", "gt0"] and second.ground_truths == ["gt1", "gt1"]
    assert second.extra_infos == [{"row": 2}, {"row": 3}]
    # Padded fields are cut by rows only; responses of the second half are at most 3 long.
    assert second.rollout_logprobs.shape == (2, 4)


def test_concat_widens_padded_fields_of_different_widths() -> None:
    short = rollout_batch(PROMPTS[:2], [[10], [11, 12]])
    long = rollout_batch(PROMPTS[2:], [[13, 14, 15, 16, 17], [18]])
    assert short.rollout_logprobs.shape[1] == 2 and long.rollout_logprobs.shape[1] == 5
    joined = concat_batches([short, long])
    assert joined.rollout_logprobs.shape == (4, 5)
    assert torch.equal(joined.rollout_logprobs[:2, :2], short.rollout_logprobs)
    assert torch.equal(joined.rollout_logprobs[:2, 2:], torch.zeros(2, 3))
    assert torch.equal(joined.rollout_logprobs[2:], long.rollout_logprobs)
    assert joined.response_lens.tolist() == [1, 2, 5, 1]
    assert joined.cu_seqlens.tolist() == [0, 4, 9, 16, 19]
    assert joined.response_ids()[2].tolist() == [13, 14, 15, 16, 17]
    assert torch.equal(joined.response_mask(), length_mask(torch.tensor([1, 2, 5, 1]), 5))


@pytest.mark.parametrize("optional", [True, False])
def test_train_batch_split_concat_round_trip(optional: bool) -> None:
    batch = train_batch(optional)
    pieces = split_batch(batch, 2)
    if not optional:
        assert all(p.old_logprobs is None and p.rollout_logprobs is None for p in pieces)
    assert all(p.ref_logprobs is None for p in pieces)
    assert_batches_equal(concat_batches(pieces), batch)


def test_prompt_batch_split_concat_round_trip() -> None:
    batch = prompt_batch(5)
    pieces = split_batch(batch, 3, even=False)
    assert [len(p) for p in pieces] == [2, 2, 1]
    assert pieces[2].indices == [4] and pieces[2].prompt_ids == [[0, 1, 2, 3, 4]]
    assert_batches_equal(concat_batches(pieces), batch)


def test_even_split_refuses_uneven_sizes() -> None:
    with pytest.raises(ValueError, match="cannot split 5 sequences into 2 equal parts"):
        split_batch(prompt_batch(5), 2)


def test_uneven_split_with_fewer_rows_than_parts_gives_empty_parts() -> None:
    batch = rollout_batch()
    pieces = split_batch(batch, 6, even=False)
    assert [len(p) for p in pieces] == [1, 1, 1, 1, 0, 0]
    empty = pieces[-1]
    assert empty.tokens.numel() == 0 and empty.cu_seqlens.tolist() == [0]
    assert empty.rollout_logprobs.shape == (0, 4) and empty.response_texts == []
    assert empty.response_mask().shape == (0, 4)
    assert_batches_equal(concat_batches(pieces), batch)
    prompt_pieces = split_batch(prompt_batch(2), 4, even=False)
    assert [len(p) for p in prompt_pieces] == [1, 1, 0, 0]


def test_select_rows_keeps_packed_tokens_consistent_with_cu_seqlens() -> None:
    batch = rollout_batch()
    picked = select_rows(batch, [3, 0])
    assert sequences(picked) == [PROMPTS[3] + RESPONSES[3], PROMPTS[0] + RESPONSES[0]]
    assert picked.cu_seqlens.tolist() == [0, 5, 10]
    assert picked.tokens.numel() == int(picked.cu_seqlens[-1])
    assert picked.prompt_lens.tolist() == [2, 3]
    assert picked.response_lens.tolist() == [3, 2]
    assert picked.response_ids()[0].tolist() == [17, 18, 19, 0]
    assert picked.truncated.tolist() == [False, False]
    assert picked.response_texts == [batch.response_texts[3], batch.response_texts[0]]
    assert torch.equal(picked.rollout_logprobs, batch.rollout_logprobs[[3, 0]])
    assert picked.group_size == batch.group_size
    # The original batch is untouched.
    assert batch.cu_seqlens.tolist() == [0, 5, 12, 15, 20]


def test_select_rows_on_train_batch_with_none_fields() -> None:
    batch = train_batch(optional=False)
    picked = select_rows(batch, [1, 2])
    assert picked.old_logprobs is None and picked.ref_logprobs is None
    assert picked.seq_lens.tolist() == [7, 3]
    assert torch.equal(picked.advantages, batch.advantages[[1, 2]])


def test_chunk_rows() -> None:
    assert chunk_rows(7, 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert chunk_rows(2, 4) == [[0], [1], [], []]
    assert chunk_rows(0, 2) == [[], []]
    for n in range(10):
        for parts in range(1, 5):
            chunks = chunk_rows(n, parts)
            assert len(chunks) == parts
            assert [i for c in chunks for i in c] == list(range(n))
            assert max(map(len, chunks)) - min(map(len, chunks)) <= 1


# ---- micro-batches -------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_balanced_chunks_exactly_k_bins_all_rows_once(k: int) -> None:
    lengths = [90, 10, 40, 40, 30, 20, 70, 5, 60, 35]
    bins = balanced_chunks(lengths, k)
    assert len(bins) == k
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(b == sorted(b) for b in bins)                    # original order inside a bin
    loads = [sum(lengths[i] for i in b) for b in bins]
    # Longest-first greedy: no bin exceeds the ideal share by more than the longest row.
    assert max(loads) <= sum(lengths) / k + max(lengths)
    assert max(loads) - min(loads) <= max(lengths)


def test_balanced_chunks_hand_checked_and_empty_bins() -> None:
    assert balanced_chunks([5, 5, 5, 5], 2) == [[0, 2], [1, 3]]
    bins = balanced_chunks([8, 1, 1, 6], 2)
    assert sorted(sum([8, 1, 1, 6][i] for i in b) for b in bins) == [8, 8]
    assert balanced_chunks([3], 3) == [[0], [], []]
    assert balanced_chunks([], 2) == [[], []]


# ---- pickling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [rollout_batch, train_batch, prompt_batch])
def test_pickle_round_trip(make) -> None:
    batch = make()
    again = pickle.loads(pickle.dumps(batch))
    assert_batches_equal(again, batch)
