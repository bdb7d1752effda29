"""Typed batches that move between the controller and the worker groups (docs/design.md §2).

Sequences travel packed: all tokens of a batch in one 1-D tensor with cumulative lengths `cu_seqlens`,
so no padding crosses the object store. Per-response tensors that algorithms need as (B, R) matrices
(logprobs, masks, advantages) are right-padded to the longest response in the batch; R may differ
between batches, and `concat` pads to the widest.

Every field has a `kind` in its metadata so that one generic split/concat serves all batch types:
  "row"    – tensor or list whose first dimension is B (one entry per sequence)
  "padded" – (B, R) tensor, right-padded along R
  "packed" – 1-D tensor cut by `cu_seqlens`
  "const"  – the same for every row (a scalar such as the group size)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields, replace
from typing import Any, Sequence, TypeVar

import torch
from torch import Tensor


def _row(**kw: Any) -> Any:
    return field(metadata={"kind": "row"}, **kw)


def _padded(**kw: Any) -> Any:
    return field(metadata={"kind": "padded"}, **kw)


def _packed(**kw: Any) -> Any:
    return field(metadata={"kind": "packed"}, **kw)


def _const(**kw: Any) -> Any:
    return field(metadata={"kind": "const"}, **kw)


def pack(sequences: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Token lists -> (tokens (S,) int64, cu_seqlens (B+1,) int64)."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    cu = torch.zeros(len(sequences) + 1, dtype=torch.int64)
    cu[1:] = torch.cumsum(lengths, 0)
    flat = [t for s in sequences for t in s]
    return torch.tensor(flat, dtype=torch.int64), cu


def unpack(tokens: Tensor, cu_seqlens: Tensor) -> list[Tensor]:
    """Inverse of `pack`: (S,) and (B+1,) -> B tensors."""
    bounds = cu_seqlens.tolist()
    return [tokens[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]


def pad_right(rows: Sequence[Tensor], value: float = 0.0, width: int | None = None) -> Tensor:
    """B 1-D tensors -> (B, width) right-padded; width defaults to the longest row."""
    width = max([len(r) for r in rows] + [0]) if width is None else width
    dtype = rows[0].dtype if rows else torch.float32
    out = torch.full((len(rows), width), value, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


@dataclass(frozen=True)
class SamplingParams:
    """How the rollout engines sample; passed explicitly with every generate call."""

    n: int = 1                    # samples per prompt
    temperature: float = 1.0      # 0 means greedy
    top_p: float = 1.0
    top_k: int = -1               # -1: no top-k cut
    max_new_tokens: int = 256     # the response budget of this call (the length schedule's current value)
    seed: int = 0                 # makes a call reproducible; the controller varies it per step
    ignore_eos: bool = False      # sample to max_new_tokens (benchmarks of long responses)


def derive_seed(base: int, *keys: int) -> int:
    """A seed for one stream of a call (an engine, a prompt, a chunk), below 2^62 so that vLLM's
    per-sample offsets (seed + sample index) stay in range. Hashing rather than adding keeps streams of
    neighbouring steps, engines and prompts from overlapping."""
    digest = hashlib.blake2b(repr((base, *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


@dataclass
class PromptBatch:
    """P prompts sent to the rollout group; each will be sampled `n` times."""

    prompt_ids: list[list[int]] = _row()      # P token lists (templated prompt, no padding)
    ground_truths: list[str] = _row()         # P
    data_sources: list[str] = _row()          # P
    extra_infos: list[dict] = _row()          # P
    indices: list[int] = _row()               # P dataset row indices

    def __len__(self) -> int:
        return len(self.prompt_ids)


@dataclass
class RolloutBatch:
    """B = P*n sampled sequences; rows g*n .. g*n+n-1 answer prompt g (group order is kept)."""

    # trajectory
    tokens: Tensor = _packed()                # (S,) int64 prompt+response tokens of all sequences
    cu_seqlens: Tensor = _row()               # (B+1,) int64; special-cased in split/concat
    prompt_lens: Tensor = _row()              # (B,) int64
    truncated: Tensor = _row()                # (B,) bool: hit the response budget without EOS
    # policy that sampled
    rollout_logprobs: Tensor = _padded()      # (B, R) float32 sampler logprobs of response tokens
    # outcome inputs
    response_texts: list[str] = _row()        # B decoded responses (special tokens skipped)
    ground_truths: list[str] = _row()         # B
    data_sources: list[str] = _row()          # B
    extra_infos: list[dict] = _row()          # B
    group_size: int = _const(default=1)       # n
    # filled by the controller as the step goes (None until then), so that selecting and concatenating
    # groups carries them along
    scores: Tensor | None = _row(default=None)          # (B,) float32 total reward, NaN = unscorable
    ref_logprobs: Tensor | None = _padded(default=None)  # (B, R) reference logprobs (KL on)
    old_logprobs: Tensor | None = _padded(default=None)  # (B, R) actor logprobs before the update (off-policy)
    # the weight version (actor training steps) that sampled each response token, stamped by the rollout
    # worker from the version its engine last received (padding carries the row's version too)
    token_versions: Tensor | None = _padded(default=None)  # (B, R) int64

    def __len__(self) -> int:
        return len(self.prompt_lens)

    @property
    def response_lens(self) -> Tensor:        # (B,) int64
        return (self.cu_seqlens[1:] - self.cu_seqlens[:-1]) - self.prompt_lens

    def response_mask(self) -> Tensor:        # (B, R) float32, 1 on real response tokens
        return length_mask(self.response_lens, self.rollout_logprobs.shape[1])

    def response_ids(self) -> Tensor:         # (B, R) int64, right-padded with 0
        seqs = unpack(self.tokens, self.cu_seqlens)
        rows = [s[int(p):] for s, p in zip(seqs, self.prompt_lens)]
        return pad_right(rows, 0, width=self.rollout_logprobs.shape[1])


@dataclass
class TrainBatch:
    """What the actor trains on: the trajectory plus everything the loss needs, per response token."""

    # trajectory
    tokens: Tensor = _packed()                # (S,) int64
    cu_seqlens: Tensor = _row()               # (B+1,) int64
    prompt_lens: Tensor = _row()              # (B,) int64
    # loss inputs
    response_mask: Tensor = _padded()         # (B, R) float32, 0 on padding and on masked (e.g. overlong) rows
    advantages: Tensor = _padded()            # (B, R) float32 (sequence advantages broadcast over tokens)
    old_logprobs: Tensor | None = _padded(default=None)  # (B, R) actor logprobs before the update; None: on-policy
    ref_logprobs: Tensor | None = _padded(default=None)  # (B, R) reference logprobs; None when KL is off
    rollout_logprobs: Tensor | None = _padded(default=None)  # (B, R) sampler logprobs, for the logprob-gap metric

    def __len__(self) -> int:
        return len(self.prompt_lens)

    @property
    def seq_lens(self) -> Tensor:             # (B,) int64 prompt+response lengths
        return self.cu_seqlens[1:] - self.cu_seqlens[:-1]


def length_mask(lengths: Tensor, width: int) -> Tensor:
    """(B,) lengths -> (B, width) float32 mask with ones on the first `length` columns."""
    return (torch.arange(width)[None, :] < lengths[:, None]).to(torch.float32)


Batch = TypeVar("Batch", PromptBatch, RolloutBatch, TrainBatch)


def split_batch(batch: Batch, parts: int, *, even: bool = True) -> list[Batch]:
    """Cut B rows into `parts` contiguous chunks; groups stay contiguous.

    even=True (training) demands equal chunks; even=False (inference passes) allows chunk sizes that
    differ by one, and empty chunks when B < parts.
    """
    n = len(batch)
    if even and n % parts:
        raise ValueError(f"cannot split {n} sequences into {parts} equal parts")
    return [select_rows(batch, rows) for rows in chunk_rows(n, parts)]


def chunk_rows(n: int, parts: int) -> list[list[int]]:
    """range(n) cut into `parts` contiguous runs whose sizes differ by at most one."""
    size, extra = divmod(n, parts)
    bounds = [0]
    for i in range(parts):
        bounds.append(bounds[-1] + size + (1 if i < extra else 0))
    return [list(range(bounds[i], bounds[i + 1])) for i in range(parts)]


def select_rows(batch: Batch, rows: Sequence[int]) -> Batch:
    """The sub-batch of the given row indices, in that order."""
    idx = torch.as_tensor(list(rows), dtype=torch.int64)
    seqs = unpack(batch.tokens, batch.cu_seqlens) if hasattr(batch, "cu_seqlens") else None
    values: dict[str, Any] = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        kind = f.metadata["kind"]
        if value is None or kind == "const":
            values[f.name] = value
        elif f.name == "cu_seqlens":
            # Offsets from the selected lengths (not from S placeholder tokens: S reaches 10^8 in GPU recipes).
            lengths = (value[1:] - value[:-1])[idx]
            values[f.name] = torch.cat([value.new_zeros(1), torch.cumsum(lengths, 0)])
        elif kind == "packed":
            values[f.name] = torch.cat([seqs[i] for i in rows]) if len(rows) else value[:0]
        elif isinstance(value, Tensor):
            values[f.name] = value[idx]
        else:
            values[f.name] = [value[i] for i in rows]
    return replace(batch, **values)


def concat_batches(batches: Sequence[Batch]) -> Batch:
    """Inverse of `split_batch`: rows in order; padded fields widened to the widest batch."""
    first = batches[0]
    values: dict[str, Any] = {}
    for f in fields(first):
        parts = [getattr(b, f.name) for b in batches]
        kind = f.metadata["kind"]
        if parts[0] is None or kind == "const":
            values[f.name] = parts[0]
        elif f.name == "cu_seqlens":
            offsets = torch.cumsum(torch.tensor([0] + [int(p[-1]) for p in parts[:-1]]), 0)
            values[f.name] = torch.cat([parts[0][:1]] + [p[1:] + o for p, o in zip(parts, offsets)])
        elif kind == "padded":
            width = max(p.shape[1] for p in parts)
            values[f.name] = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])
        elif isinstance(parts[0], Tensor):
            values[f.name] = torch.cat(parts)
        else:
            values[f.name] = [x for p in parts for x in p]
    return replace(first, **values)


def assemble_rollout(prompts: PromptBatch, n: int, responses: list[list[int]], logprobs: list[Tensor],
                     truncated: list[bool], texts: list[str]) -> RolloutBatch:
    """The one place where sampled token lists become a RolloutBatch (every rollout engine ends here).

    `responses[j]`, `logprobs[j]` (its per-token sampler logprobs), `truncated[j]` and `texts[j]` belong to
    row j, which answers prompt j // n: the n samples of a prompt are adjacent rows.
    """
    rows = [i for i in range(len(prompts)) for _ in range(n)]
    if not len(rows) == len(responses) == len(logprobs) == len(truncated) == len(texts):
        raise ValueError(f"assemble_rollout: {len(prompts)} prompts x n={n} need {len(rows)} rows, got "
                         f"{len(responses)} responses, {len(logprobs)} logprob rows, {len(texts)} texts")
    tokens, cu = pack([prompts.prompt_ids[i] + list(r) for i, r in zip(rows, responses)])
    return RolloutBatch(
        tokens=tokens, cu_seqlens=cu,
        prompt_lens=torch.tensor([len(prompts.prompt_ids[i]) for i in rows], dtype=torch.int64),
        truncated=torch.tensor(truncated, dtype=torch.bool),
        rollout_logprobs=pad_right([lp.float() for lp in logprobs], 0.0),
        response_texts=list(texts),
        ground_truths=[prompts.ground_truths[i] for i in rows],
        data_sources=[prompts.data_sources[i] for i in rows],
        extra_infos=[prompts.extra_infos[i] for i in rows],
        group_size=n)
