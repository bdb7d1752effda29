"""Free-running asynchronous rollouts, the pure part: groups generated in segments across weight updates.

With `trainer.async_mode=free_running` the engines do not wait for the trainer. They generate responses in
segments of at most `trainer.segment_tokens` tokens, and a weight update lands between two segments: the
response then goes on under the new weights (a partial rollout). This is vLLM's `pause_generation(
mode="abort")` followed by a resubmission with the tokens so far, done by r1ray at its own segment
boundary, so it works the same for every rollout engine (the HF engine's decode loop included). Every token
keeps the weight version and the behaviour logprob (mu) of the engine call that sampled it.

This module holds the state and the rules, without Ray (`controller/free_running.py` drives the engines):
- `Response` and `Group`: the n responses of one prompt, growing segment by segment;
- `admissible`: admission control, which keeps the staleness bound by construction;
- `GroupBuffer`: the groups admitted and not trained yet, the engine calls that continue them, and the
  groups a step may train.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

import torch

from r1ray.protocol import PromptBatch, RolloutBatch, SamplingParams, assemble_rollout, concat_batches, pad_right


@dataclass
class Response:
    """One response, possibly sampled by several weight versions."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)    # the engine's, per token (behaviour policy mu)
    versions: list[int] = field(default_factory=list)      # the weight version that sampled each token
    done: bool = False
    truncated: bool = False                                # ended at the budget without an EOS

    def extend(self, tokens: list[int], logprobs: list[float], version: int, hit_limit: bool, budget: int) -> None:
        """One segment's tokens. A segment that stopped before its token limit ended at an EOS (or a stop
        token); one that hit its limit goes on unless the response reached the budget."""
        self.tokens += tokens
        self.logprobs += logprobs
        self.versions += [version] * len(tokens)
        if not hit_limit:
            self.done = True
        elif len(self.tokens) >= budget:
            self.done, self.truncated = True, True


@dataclass
class Group:
    """The n responses of one prompt, admitted at once and trained together."""

    gid: int                    # admission order
    prompt: PromptBatch         # one prompt
    budget: int                 # the response budget (max new tokens) when it was admitted
    engine: int                 # the engine that generates it (its prefix cache holds the prompt)
    responses: list[Response]
    in_flight: bool = False     # an engine call is generating its next segment

    @property
    def started(self) -> bool:
        return any(r.tokens or r.done for r in self.responses)

    @property
    def finished(self) -> bool:
        return all(r.done for r in self.responses)

    def oldest_version(self) -> int | None:
        """The oldest version among its tokens (None before its first segment came back)."""
        versions = [r.versions[0] for r in self.responses if r.versions]
        return min(versions) if versions else None

    def to_rollout(self, texts: list[str]) -> RolloutBatch:
        """The finished group as a RolloutBatch of n rows, with each token's version."""
        rs = self.responses
        batch = assemble_rollout(self.prompt, len(rs), [r.tokens for r in rs],
                                 [torch.tensor(r.logprobs, dtype=torch.float32) for r in rs],
                                 [r.truncated for r in rs], texts)
        versions = pad_right([torch.tensor(r.versions, dtype=torch.int64) for r in rs], 0)
        # Padding carries the row's last version, as the synchronous stamps do (never read under the mask).
        for i, r in enumerate(rs):
            versions[i, len(r.versions):] = r.versions[-1] if r.versions else 0
        return replace(batch, token_versions=versions.to(torch.int64))


@dataclass
class Call:
    """One engine call: rows[j] is (group id, response index) for the j-th sampled row; `prompts` and
    `sampling` are what the engine receives (n > 1 only for a group's first segment)."""

    engine: int
    rows: list[tuple[int, int]]
    prompts: PromptBatch
    sampling: SamplingParams


@dataclass
class KeepRound:
    """One round of an engine whose requests are kept across weight updates (trainer.pause_mode=keep):
    the new groups' requests are added, the ones of evicted groups aborted, and every response the engine
    holds is generated `segment_tokens` further."""

    engine: int
    gids: list[int]                 # every group of the engine the round advances
    prompts: PromptBatch | None     # the prompts of the groups not started yet (None: none)
    keys: list[str]                 # their requests, "<gid>:<response>", n per prompt in row order
    budgets: list[int]              # their response budgets, one per prompt
    abort: list[str]                # requests of groups evicted since the engine's last round
    sampling: SamplingParams


def admissible(ahead: int, per_step: int, bound: int, next_train_version: int, engine_version: int) -> bool:
    """Whether a group admitted now keeps the staleness bound: with `ahead` groups admitted before it and
    not trained, and steps taking `per_step` groups in admission order, it trains at the latest
    ahead // per_step steps after the next one, i.e. at version next_train_version + ahead // per_step;
    its oldest token comes from the engines' version now (or a newer one)."""
    return next_train_version + ahead // per_step - engine_version <= bound


class GroupBuffer:
    """Groups admitted and not trained yet, in admission order, and the prompts waiting to be admitted.

    `on_stale` says what happens to a group that would exceed the bound when it trains (possible only when
    later groups overtake it by finishing first): "regenerate" puts its prompt back at the head of the
    waiting prompts (no prompt is skipped), "drop" discards it. Both are counted."""

    def __init__(self, n: int, per_step: int, bound: int, segment_tokens: int, on_stale: str = "regenerate",
                 keep: bool = False):
        if on_stale not in ("regenerate", "drop"):
            raise ValueError(f"on_stale must be 'regenerate' or 'drop', got {on_stale!r}")
        self.keep = keep                                   # engines keep requests across updates
        self.to_abort: dict[int, list[str]] = {}           # keep: engine -> requests of evicted groups
        self.n, self.per_step, self.bound, self.segment = n, per_step, bound, segment_tokens
        self.on_stale = on_stale
        self.groups: dict[int, Group] = {}
        self.waiting: deque[PromptBatch] = deque()         # single prompts, admitted first to last
        self.next_gid = 0
        self.regenerated = self.dropped = 0

    # ---- admission ---------------------------------------------------------------------------------
    def outstanding(self) -> int:
        return len(self.groups)

    def admit(self, prompt: PromptBatch, budget: int, engine: int) -> Group:
        group = Group(self.next_gid, prompt, budget, engine, [Response() for _ in range(self.n)])
        self.groups[group.gid] = group
        self.next_gid += 1
        return group

    def load(self, engine: int) -> int:
        """Responses an engine still has to finish (to admit new groups to the least loaded one)."""
        return sum(1 for g in self.groups.values() if g.engine == engine for r in g.responses if not r.done)

    # ---- engine calls ------------------------------------------------------------------------------
    def next_calls(self, engine: int, template: SamplingParams) -> list[Call]:
        """The calls that generate the next segment of every unfinished group of `engine` not in flight:
        one call for the groups not started (n samples of each prompt), one per remaining-token limit for
        the responses being continued (each a prompt of its own: prompt + its tokens so far, n = 1)."""
        mine = [g for g in self.groups.values() if g.engine == engine and not g.in_flight and not g.finished]
        calls: list[Call] = []
        fresh: dict[int, list[Group]] = {}
        going: dict[int, list[tuple[Group, int]]] = {}
        for g in mine:
            g.in_flight = True
            if not g.started:
                fresh.setdefault(min(self.segment, g.budget), []).append(g)
            else:
                for i, r in enumerate(g.responses):
                    if not r.done:
                        going.setdefault(min(self.segment, g.budget - len(r.tokens)), []).append((g, i))
        for limit, groups in sorted(fresh.items()):
            prompts = concat_batches([g.prompt for g in groups])
            rows = [(g.gid, i) for g in groups for i in range(self.n)]
            calls.append(Call(engine, rows, prompts, replace(template, n=self.n, max_new_tokens=limit)))
        for limit, items in sorted(going.items()):
            prompts = concat_batches([replace(g.prompt, prompt_ids=[g.prompt.prompt_ids[0] + g.responses[i].tokens])
                                      for g, i in items])
            calls.append(Call(engine, [(g.gid, i) for g, i in items], prompts, replace(template, n=1, max_new_tokens=limit)))
        return calls

    def next_round(self, engine: int, template: SamplingParams) -> KeepRound | None:
        """Keep mode: the engine's next round (None when it has nothing to generate or abort)."""
        mine = [g for g in self.groups.values() if g.engine == engine and not g.finished]
        abort = self.to_abort.pop(engine, [])
        if not mine and not abort:
            return None
        fresh = [g for g in mine if not g.started]
        for g in mine:
            g.in_flight = True
        prompts = concat_batches([g.prompt for g in fresh]) if fresh else None
        keys = [f"{g.gid}:{i}" for g in fresh for i in range(self.n)]
        return KeepRound(engine, [g.gid for g in mine], prompts, keys, [g.budget for g in fresh], abort,
                         replace(template, n=self.n, max_new_tokens=self.segment))

    def merge_kept(self, version: int, rows: dict[str, tuple[list[int], list[float], bool, bool]]) -> None:
        """Keep mode: each kept response's tokens since its engine's last round, all sampled at `version`,
        and whether it finished (truncated: at its token limit, without a stop token)."""
        for key, (tokens, logprobs, finished, truncated) in rows.items():
            gid, i = (int(x) for x in key.split(":"))
            group = self.groups.get(gid)
            if group is None:                              # trained, regenerated or dropped meanwhile
                continue
            response = group.responses[i]
            response.extend(tokens, logprobs, version, True, group.budget)
            if finished:
                response.done, response.truncated = True, truncated

    def merge(self, call: Call, batch: RolloutBatch) -> None:
        """An engine call's rows, appended to their responses. Rows of a group no longer held (trained,
        regenerated or dropped meanwhile) are ignored."""
        lens = batch.response_lens.tolist()
        ids = batch.response_ids()
        for j, (gid, i) in enumerate(call.rows):
            group = self.groups.get(gid)
            if group is None:
                continue
            n = lens[j]
            group.responses[i].extend(ids[j, :n].tolist(), batch.rollout_logprobs[j, :n].tolist(),
                                      int(batch.token_versions[j, 0]), bool(batch.truncated[j]), group.budget)

    def landed(self, gids: set[int]) -> None:
        """Every call of these groups came back: they may get their next segment."""
        for gid in gids:
            if gid in self.groups:
                self.groups[gid].in_flight = False

    # ---- training ----------------------------------------------------------------------------------
    def evict_stale(self, train_version: int) -> list[Group]:
        """Groups whose oldest token is already more than the bound behind `train_version` (they can only
        get older): regenerated from their prompts or dropped, per `on_stale`."""
        stale = [g for g in self.groups.values()
                 if g.oldest_version() is not None and train_version - g.oldest_version() > self.bound]
        for g in stale:
            del self.groups[g.gid]
            if self.keep:                                  # its requests may still be live in the engine
                self.to_abort.setdefault(g.engine, []).extend(f"{g.gid}:{i}" for i in range(self.n))
        if self.on_stale == "regenerate":
            self.waiting.extendleft(reversed([g.prompt for g in stale]))
            self.regenerated += len(stale)
        else:
            self.dropped += len(stale)
        return stale

    def take(self, count: int) -> list[Group] | None:
        """The `count` finished groups admitted first, removed from the buffer; None until that many have
        finished. Call `evict_stale` first: what is left keeps the bound."""
        finished = [g for g in self.groups.values() if g.finished]
        if len(finished) < count:
            return None
        chosen = finished[:count]
        for g in chosen:
            del self.groups[g.gid]
        return chosen

    def unfinished_prompts(self) -> list[PromptBatch]:
        """Every prompt given out and not trained: the groups held (in admission order), then the waiting
        prompts. A checkpoint stores them; a resumed run generates them again first."""
        return [g.prompt for g in self.groups.values()] + list(self.waiting)


def rows_of(prompts: PromptBatch) -> list[PromptBatch]:
    """A PromptBatch cut into single prompts (groups are admitted one at a time)."""
    return [PromptBatch(**{k: [v[i]] for k, v in prompts.__dict__.items()}) for i in range(len(prompts))]


def partial_fraction(rollout: RolloutBatch) -> float:
    """The fraction of rows whose tokens come from more than one weight version (partial rollouts)."""
    if rollout.token_versions is None or len(rollout) == 0:
        return 0.0
    mask = rollout.response_mask().bool()
    partial = [bool((v[m] != v[m][0]).any()) if m.any() else False for v, m in zip(rollout.token_versions, mask)]
    return sum(partial) / len(partial)
