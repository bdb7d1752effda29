"""The Hugging Face rollout engine's decode loop (workers/engines/hf_decode.py) on a real tiny model.

The loop must generate what `model.generate` generates (greedy), report the logprobs the actor recomputes,
be reproducible per seed, prefill each distinct prompt once and drop rows from the batch as they end.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from r1ray.models import build_tiny_model
from r1ray.protocol import PromptBatch, SamplingParams
from r1ray.workers.engines.base import RolloutSpec
from r1ray.workers.engines import hf_decode
from r1ray.workers.engines.hf_decode import filter_logits
from r1ray.workers.engines.hf_rollout import HFRolloutEngine, plan_chunks

# Different lengths, so that left padding matters.
PROMPTS = [[200, 17, 93], [5, 6, 7, 8, 9, 10, 11], list(range(40, 52)), [88, 3, 120, 7, 64]]


def _prompts(ids: list[list[int]]) -> PromptBatch:
    k = len(ids)
    return PromptBatch(prompt_ids=ids, ground_truths=["1"] * k, data_sources=["arithmetic"] * k,
                       extra_infos=[{} for _ in range(k)], indices=list(range(k)))


def _rows(batch) -> list[list[int]]:
    return [row[:n].tolist() for row, n in zip(batch.response_ids(), batch.response_lens.tolist())]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("hf_decode") / "m", hidden=64, layers=2, heads=2, kv_heads=1)
    engine = HFRolloutEngine(RolloutSpec(engine="hf", model_path=str(path), dtype="float32", max_model_len=256,
                                         seed=0), torch.device("cpu"))
    # A fresh random tiny model greedily repeats one token and almost never emits eos; noise on its weights
    # gives varied greedy output in which some rows end on eos and others run to the budget.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in engine.model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.5)
    return engine


def _reference_greedy(engine, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """`model.generate(do_sample=False)` on left-padded prompts, cut after the first eos."""
    pad, width = engine.tokenizer.pad_token_id, max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = engine.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                eos_token_id=engine.eos_ids, pad_token_id=pad)
    rows = []
    for row in out[:, width:].tolist():
        ends = [i for i, t in enumerate(row) if t in engine.eos_ids]
        rows.append(row[:ends[0] + 1] if ends else row)
    return rows


def test_greedy_equals_generate_with_left_padding_eos_and_truncation(engine):
    budget = 30
    batch = engine.generate(_prompts(PROMPTS), SamplingParams(n=2, temperature=0.0, max_new_tokens=budget))
    reference = [r for r in _reference_greedy(engine, PROMPTS, budget) for _ in range(2)]
    assert _rows(batch) == reference
    eos = set(engine.eos_ids)
    ended = [r[-1] in eos for r in reference]
    assert any(ended) and not all(ended), "the model must give both eos-ended and truncated rows"
    assert batch.truncated.tolist() == [not e for e in ended]
    for row, cut in zip(_rows(batch), batch.truncated.tolist()):
        assert not any(t in eos for t in row[:-1])                 # eos only as the last token
        assert (len(row) == budget) if cut else (row[-1] in eos)   # the eos token is in the response
    assert batch.response_texts == engine.tokenizer.batch_decode(reference, skip_special_tokens=True)


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, -1), (0.7, 1.0, -1), (0.7, 0.9, -1),
                                                     (1.0, 0.9, 20), (0.0, 1.0, -1)])
def test_rollout_logprobs_equal_a_teacher_forced_recomputation(engine, temperature, top_p, top_k):
    sampling = SamplingParams(n=4, temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=16, seed=3)
    batch = engine.generate(_prompts(PROMPTS[:3]), sampling)
    scale = temperature if temperature > 0 else 1.0                # greedy is scored at T=1
    for j, response in enumerate(_rows(batch)):
        prompt = PROMPTS[j // 4]
        with torch.no_grad():
            logits = engine.model(input_ids=torch.tensor([prompt + response])).logits[0].float()
        scaled = logits[len(prompt) - 1:-1] / scale                                   # (R, V)
        target = torch.tensor(response)
        expected = scaled.log_softmax(-1).gather(-1, target[:, None]).squeeze(1)
        got = batch.rollout_logprobs[j, :len(response)]
        assert torch.allclose(got, expected, atol=1e-4), (j, (got - expected).abs().max())
        if temperature > 0:                                   # every sampled token survived top-k / top-p
            kept = filter_logits(scaled, top_k, top_p).gather(-1, target[:, None])
            assert torch.isfinite(kept).all()


def test_same_seed_same_samples_other_seed_other_samples(engine):
    prompts = _prompts([PROMPTS[0]])
    sampling = SamplingParams(n=8, temperature=1.0, max_new_tokens=12, seed=11)
    first = engine.generate(prompts, sampling)
    again = engine.generate(prompts, sampling)
    assert _rows(first) == _rows(again)
    assert torch.equal(first.rollout_logprobs, again.rollout_logprobs)
    assert _rows(first) != _rows(engine.generate(prompts, replace(sampling, seed=12)))
    assert len({tuple(r) for r in _rows(first)}) == 8                        # n samples of one prompt differ


def _forward_shapes(engine, prompts: PromptBatch, sampling: SamplingParams):
    """(batch, length) of input_ids in every forward call of one generate call."""
    shapes: list[tuple[int, int]] = []
    hook = engine.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        batch = engine.generate(prompts, sampling)
    finally:
        hook.remove()
    return shapes, batch


def test_prefill_runs_once_per_prompt_and_finished_rows_leave_the_batch(engine):
    sampling = SamplingParams(n=8, temperature=1.0, max_new_tokens=40, seed=5)
    shapes, batch = _forward_shapes(engine, _prompts(PROMPTS[:3]), sampling)
    assert shapes[0] == (3, 12)                                              # 3 prompts, not 24 rows
    assert all(length == 1 for _, length in shapes[1:])                      # then one token per decode step
    sizes, lens = [b for b, _ in shapes[1:]], batch.response_lens
    # Decode call k feeds token k of the rows still live (those longer than k tokens) plus ended rows not
    # yet dropped, which are fewer than COMPACT_AT of the batch before the call.
    live = [int((lens > k).sum()) for k in range(1, int(lens.max()))]
    assert len(sizes) == len(live)
    for size, alive, before in zip(sizes, live, [24] + sizes):
        assert alive <= size and size - alive < max(1, int(before * hf_decode.COMPACT_AT)), (size, alive, before)
    assert all(a >= b for a, b in zip(sizes, sizes[1:]))
    assert min(sizes) < 24, "some rows must end before the budget"


def test_a_group_larger_than_the_chunk_is_split_and_prefilled_once_per_chunk(engine):
    spec = engine.spec
    engine.spec = replace(spec, generate_batch_size=3)
    try:
        sampling = SamplingParams(n=8, temperature=1.0, max_new_tokens=6, seed=2)
        shapes, batch = _forward_shapes(engine, _prompts(PROMPTS[:2]), sampling)
        again = engine.generate(_prompts(PROMPTS[:2]), sampling)
    finally:
        engine.spec = spec
    assert len(batch) == 16 and batch.prompt_lens.tolist() == [3] * 8 + [7] * 8
    prefills = [shape for shape in shapes if shape[1] > 1]
    assert prefills == [(1, 3)] * 3 + [(1, 7)] * 3                          # chunks of 3 + 3 + 2 rows per prompt
    assert max(b for b, _ in shapes) <= 3
    assert _rows(batch) == _rows(again)


def test_plan_chunks_keeps_whole_groups_and_splits_only_groups_larger_than_a_chunk():
    assert plan_chunks(3, 8, 16) == [(0, [(0, 8), (1, 8)]), (16, [(2, 8)])]
    assert plan_chunks(3, 4, 10) == [(0, [(0, 4), (1, 4)]), (8, [(2, 4)])]
    assert plan_chunks(2, 8, 3) == [(0, [(0, 3)]), (3, [(0, 3)]), (6, [(0, 2)]),
                                    (8, [(1, 3)]), (11, [(1, 3)]), (14, [(1, 2)])]


def test_ignore_eos_samples_every_response_to_its_budget(engine):
    """Benchmarks of long responses force the length; without the flag the same seed stops some rows."""
    sampling = SamplingParams(n=4, temperature=1.0, max_new_tokens=40, seed=5)
    stopped = engine.generate(_prompts(PROMPTS[:2]), sampling)
    forced = engine.generate(_prompts(PROMPTS[:2]), replace(sampling, ignore_eos=True))
    assert int(stopped.response_lens.min()) < 40
    assert forced.response_lens.tolist() == [40] * 8 and bool(forced.truncated.all())


def test_growing_cache_layer_holds_what_a_dynamic_layer_holds() -> None:
    """Appends past the first capacity, repeats rows, drops rows: the same keys and values as transformers'
    concatenating layer, without a copy of the cache per appended token."""
    from transformers.cache_utils import DynamicLayer

    from r1ray.workers.engines.hf_cache import MIN_CAPACITY, GrowingLayer

    gen = torch.Generator().manual_seed(0)
    grow, plain = GrowingLayer(), DynamicLayer()
    kv = lambda b, t: (torch.randn(b, 2, t, 4, generator=gen), torch.randn(b, 2, t, 4, generator=gen))  # noqa: E731
    rows = 2
    for i in range(MIN_CAPACITY + 11):
        k, v = kv(rows, 5 if i == 0 else 1)
        got, want = grow.update(k, v), plain.update(k, v)
        assert all(torch.equal(g, w) for g, w in zip(got, want)), i
        if i == 3:
            grow.batch_repeat_interleave(3)
            plain.batch_repeat_interleave(3)
            rows = 6
        if i == 20:
            keep = torch.tensor([0, 2, 5])
            grow.batch_select_indices(keep)
            plain.batch_select_indices(keep)
            rows = 3
    assert grow.get_seq_length() == plain.get_seq_length() == 5 + MIN_CAPACITY + 10
    assert grow.key_buffer.shape[-2] < 4 * grow.get_seq_length()            # doubled, not grown per token
