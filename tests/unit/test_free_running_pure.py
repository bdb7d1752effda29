"""Free-running rollouts without Ray: admission control, segments across weight versions, eviction, take."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from r1ray.controller.partial_rollouts import GroupBuffer, Response, admissible, partial_fraction, rows_of
from r1ray.protocol import PromptBatch, SamplingParams, assemble_rollout

EOS = 2


def _prompts(*ids: list[int]) -> PromptBatch:
    k = len(ids)
    return PromptBatch(prompt_ids=[list(x) for x in ids], ground_truths=[str(i) for i in range(k)],
                       data_sources=["t"] * k, extra_infos=[{} for _ in range(k)], indices=list(range(10, 10 + k)))


def _engine_reply(call, responses: list[list[int]], version: int, limit_hit: list[bool]):
    """What a rollout worker returns for `call`: the given responses, logprob -0.5 per token, stamped."""
    batch = assemble_rollout(call.prompts, call.sampling.n, responses,
                             [torch.full((len(r),), -0.5) for r in responses], limit_hit, ["x"] * len(responses))
    return replace(batch, token_versions=torch.full(batch.rollout_logprobs.shape, version, dtype=torch.int64))


def test_admission_keeps_the_bound_by_construction():
    # K = 1, 2 groups per step, engines at the actor's version 5, the trainer waiting to train at 5: the
    # groups 0-1 train at 5, 2-3 at 6 (one version after the engines' 5), a fifth would train at 7.
    assert [admissible(ahead, 2, 1, 5, 5) for ahead in range(5)] == [True, True, True, True, False]
    # While the actor trains (the next take is at 6) with the engines still at 5, only one step ahead fits.
    assert [admissible(ahead, 2, 1, 6, 5) for ahead in range(3)] == [True, True, False]
    # K = 2: three steps of groups.
    assert [admissible(ahead, 2, 2, 5, 5) for ahead in range(7)] == [True] * 6 + [False]


def test_a_group_grows_by_segments_and_records_each_tokens_version():
    buf = GroupBuffer(n=2, per_step=1, bound=2, segment_tokens=3)
    prompt = rows_of(_prompts([7, 8, 9]))[0]
    group = buf.admit(prompt, budget=7, engine=0)
    template = SamplingParams(temperature=1.0, seed=5)

    (first,) = buf.next_calls(0, template)
    assert first.sampling.n == 2 and first.sampling.max_new_tokens == 3 and first.rows == [(0, 0), (0, 1)]
    assert buf.next_calls(0, template) == []                  # in flight: not sent twice
    # Sample 0 ends at its EOS within the segment; sample 1 hits the segment's limit.
    buf.merge(first, _engine_reply(first, [[4, EOS], [5, 6, 7]], version=3, limit_hit=[False, True]))
    buf.landed({0})
    assert group.responses[0].done and not group.responses[0].truncated
    assert not group.responses[1].done

    # The weights moved to version 4: sample 1 goes on from its tokens so far, as a prompt of its own.
    (second,) = buf.next_calls(0, template)
    assert second.prompts.prompt_ids == [[7, 8, 9, 5, 6, 7]] and second.sampling.n == 1
    assert second.sampling.max_new_tokens == 3 and second.rows == [(0, 1)]
    buf.merge(second, _engine_reply(second, [[1, 1, 1]], version=4, limit_hit=[True]))
    buf.landed({0})
    # 6 of 7 tokens: the last segment may sample one more.
    (third,) = buf.next_calls(0, template)
    assert third.sampling.max_new_tokens == 1
    buf.merge(third, _engine_reply(third, [[3]], version=5, limit_hit=[True]))
    buf.landed({0})
    r = group.responses[1]
    assert r.done and r.truncated and r.tokens == [5, 6, 7, 1, 1, 1, 3] and r.versions == [3, 3, 3, 4, 4, 4, 5]
    assert group.finished and group.oldest_version() == 3

    (taken,) = buf.take(1)
    rollout = taken.to_rollout(["a", "b"])
    assert rollout.response_lens.tolist() == [2, 7] and rollout.truncated.tolist() == [False, True]
    assert rollout.token_versions.tolist() == [[3, 3, 3, 3, 3, 3, 3], [3, 3, 3, 4, 4, 4, 5]]
    assert rollout.rollout_logprobs[1].tolist() == [-0.5] * 7
    assert rollout.tokens[rollout.cu_seqlens[1]:].tolist() == [7, 8, 9, 5, 6, 7, 1, 1, 1, 3]
    assert partial_fraction(rollout) == 0.5                   # one of the two rows spans versions
    assert buf.outstanding() == 0


def test_steps_take_finished_groups_in_admission_order():
    buf = GroupBuffer(n=1, per_step=2, bound=1, segment_tokens=4)
    for p in rows_of(_prompts([1], [2], [3])):
        buf.admit(p, budget=4, engine=0)
    (call,) = buf.next_calls(0, SamplingParams())
    # Group 1 is still going; groups 0 and 2 ended.
    buf.merge(call, _engine_reply(call, [[EOS], [5, 5, 5, 5], [EOS]], version=0, limit_hit=[False, False, False]))
    buf.groups[1].responses[0].done = False
    assert buf.take(3) is None
    assert [g.gid for g in buf.take(2)] == [0, 2]
    assert list(buf.groups) == [1]


@pytest.mark.parametrize("on_stale", ["regenerate", "drop"])
def test_a_group_that_would_exceed_the_bound_is_regenerated_or_dropped(on_stale):
    buf = GroupBuffer(n=1, per_step=1, bound=1, segment_tokens=2, on_stale=on_stale)
    old, new = rows_of(_prompts([1], [2]))
    buf.admit(old, budget=8, engine=0)
    (call,) = buf.next_calls(0, SamplingParams())
    buf.merge(call, _engine_reply(call, [[4, 4]], version=3, limit_hit=[True]))
    buf.landed({0})
    buf.waiting.append(new)
    assert buf.evict_stale(4) == []                            # 1 version behind: still fine
    (gone,) = buf.evict_stale(5)                               # 2 behind at the next take: out
    assert gone.prompt is old and buf.outstanding() == 0
    if on_stale == "regenerate":
        assert list(buf.waiting) == [old, new] and buf.regenerated == 1 and buf.dropped == 0
    else:
        assert list(buf.waiting) == [new] and buf.dropped == 1 and buf.regenerated == 0
    # A reply for the evicted group that comes back later is ignored.
    buf.merge(call, _engine_reply(call, [[4, 4]], version=3, limit_hit=[True]))


def test_unfinished_prompts_are_the_held_groups_then_the_waiting_ones():
    buf = GroupBuffer(n=2, per_step=1, bound=1, segment_tokens=2)
    a, b, c = rows_of(_prompts([1], [2], [3]))
    buf.admit(a, budget=4, engine=0)
    buf.admit(b, budget=4, engine=1)
    buf.waiting.append(c)
    assert [p.indices for p in buf.unfinished_prompts()] == [[10], [11], [12]]
    assert buf.load(0) == 2 and buf.load(1) == 2


def test_response_extend_needs_the_limit_to_continue():
    r = Response()
    r.extend([1, 2], [-0.1, -0.2], version=0, hit_limit=True, budget=4)
    assert not r.done
    r.extend([3, 4], [-0.3, -0.4], version=1, hit_limit=True, budget=4)
    assert r.done and r.truncated and r.versions == [0, 0, 1, 1]


def test_unknown_on_stale_is_refused():
    with pytest.raises(ValueError, match="on_stale must be"):
        GroupBuffer(n=2, per_step=1, bound=1, segment_tokens=2, on_stale="wait")


ASYNC_CONFIG = """
model: {path: runs/tiny, init_tiny: true}
data: {generate: {task: arithmetic, train_size: 8}}
placement:
  pools:
    train: {nodes: 1, devices_per_node: 1, device: cpu}
    gen: {nodes: 1, devices_per_node: 1, device: cpu}
  actor: train
  ref: train
  rollout: gen
  reward: gen
trainer: {max_staleness: 2}
"""


def _config_problems(tmp_path, *overrides: str) -> list[str]:
    from r1ray.config_load import ConfigError, load_config

    path = tmp_path / "async.yaml"
    path.write_text(ASYNC_CONFIG)
    try:
        load_config(path, list(overrides))
    except ConfigError as exc:
        return exc.problems
    return []


def test_free_running_config_is_checked_with_one_line_per_field(tmp_path):
    assert _config_problems(tmp_path, "trainer.async_mode=free_running", "trainer.segment_tokens=16") == []
    assert _config_problems(tmp_path, "trainer.async_mode=free_running", "trainer.segment_tokens=0") == [
        "trainer.segment_tokens: 0 must be >= 1 (tokens per response and engine call in free-running mode)"]
    (line,) = _config_problems(tmp_path, "trainer.async_mode=freerunning")
    assert line.startswith("trainer.async_mode:") and "free_running" in line
    (line,) = _config_problems(tmp_path, "trainer.async_mode=free_running", "trainer.stale_groups=wait")
    assert line.startswith("trainer.stale_groups:") and "regenerate" in line
    (line,) = _config_problems(tmp_path, "trainer.async_mode=free_running", "trainer.pause_mode=hold")
    assert line.startswith("trainer.pause_mode:") and "keep" in line


def test_keep_mode_needs_free_running_and_an_engine_that_keeps_requests(tmp_path):
    free = ("trainer.async_mode=free_running", "trainer.pause_mode=keep")
    # (a vLLM run may be refused for other reasons here: the tiny model's head size, vLLM not installed)
    assert not [p for p in _config_problems(tmp_path, *free, "rollout.engine=vllm") if p.startswith("trainer.pause_mode")]
    assert _config_problems(tmp_path, *free) == [
        "trainer.pause_mode: keep needs a rollout engine that holds requests across weight updates (vllm), not "
        "rollout.engine=hf; use trainer.pause_mode=abort (it pauses at segment boundaries) or rollout.engine=vllm"]
    assert _config_problems(tmp_path, "trainer.pause_mode=keep", "rollout.engine=vllm") == [
        "trainer.pause_mode: keep applies to trainer.async_mode=free_running (fixed lag generates whole responses "
        "between updates); set trainer.async_mode=free_running"]


def test_keep_mode_rounds_add_new_groups_continue_the_rest_and_abort_evicted_ones():
    """trainer.pause_mode=keep: one round per engine adds the requests of the groups not started, moves every
    kept response on, and aborts the requests of groups evicted since the engine's last round."""
    buf = GroupBuffer(n=2, per_step=1, bound=1, segment_tokens=3, keep=True)
    template = SamplingParams(temperature=1.0, seed=5)
    first = buf.admit(rows_of(_prompts([7, 8]))[0], budget=6, engine=0)
    assert buf.next_round(1, template) is None                # engine 1 has nothing to do

    round_ = buf.next_round(0, template)
    assert round_.gids == [0] and round_.keys == ["0:0", "0:1"] and round_.budgets == [6] and round_.abort == []
    assert round_.prompts.prompt_ids == [[7, 8]] and round_.sampling.n == 2 and round_.sampling.max_new_tokens == 3
    # Sample 0 stopped at a stop token, sample 1 goes on (version 3).
    buf.merge_kept(3, {"0:0": ([4, EOS], [-0.1, -0.2], True, False), "0:1": ([5, 6, 7], [-0.3] * 3, False, False)})
    buf.landed(set(round_.gids))
    assert first.responses[0].done and not first.responses[0].truncated and not first.responses[1].done

    second = buf.admit(rows_of(_prompts([9]))[0], budget=6, engine=0)
    round_ = buf.next_round(0, template)
    assert round_.gids == [0, 1] and round_.keys == ["1:0", "1:1"] and round_.prompts.prompt_ids == [[9]]
    # The kept response reaches its budget (truncated) under version 4; the new group's samples start.
    buf.merge_kept(4, {"0:1": ([1, 1, 1], [-0.4] * 3, True, True), "1:0": ([3, 3, 3], [-0.5] * 3, False, False),
                       "1:1": ([EOS], [-0.6], True, False)})
    buf.landed(set(round_.gids))
    assert first.finished and first.responses[1].truncated
    assert first.responses[1].tokens == [5, 6, 7, 1, 1, 1] and first.responses[1].versions == [3, 3, 3, 4, 4, 4]
    assert buf.take(1) == [first]

    # The second group is evicted at version 5 (its oldest token is 4 > 1 version behind 6): its live
    # request is aborted in the engine's next round, and tokens that still arrive for it are ignored.
    assert buf.evict_stale(6) == [second]
    buf.merge_kept(5, {"1:0": ([8], [-0.1], False, False)})
    round_ = buf.next_round(0, template)
    assert round_.abort == ["1:0", "1:1"] and round_.gids == [] and round_.prompts is None
    assert buf.next_round(0, template) is None
