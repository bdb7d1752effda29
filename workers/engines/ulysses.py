"""Ulysses sequence parallelism (docs/design.md §11): each sequence split across S ranks of the training world.

The S ranks of a sequence-parallel group (consecutive ranks of the data-parallel world) train on the
union of their rows (`gather_rows`), and each holds a contiguous 1/S of every micro-batch's columns for
everything outside attention: embeddings, MLPs, norms, LM head, logprobs. Attention needs the whole
sequence, so it runs as `ulysses_attention`: an all-to-all trades "all heads of my columns" for "all
columns of 1/S of the heads", the model's own kernel (sdpa, eager, flash-attention) attends over the whole
sequence with the whole-sequence mask, and a second all-to-all trades back.

Labels are shifted before the split, not inside a shard. The micro-batch layout (`packing.py`) is built
whole on every rank, and the target of each kept column comes from the unsplit row, so the last column of
a shard is scored against the first token of the next shard. A shift inside each shard gets that one
label wrong per boundary and crashes nothing (verl #6068).

Logprobs and entropy are computed on each rank's own columns (by the scoring head of `packing.py`) and
gathered over the group in row-major order. Every rank of the group then computes the same loss from the same gathered values, so the
gather's backward keeps only the rank's own slice: the gradient reaches each column exactly once.

Gradients stay exact without rescaling. FSDP2 and DeepSpeed average gradients over all W ranks, and the
loss of a micro-batch is weighted by its share of the global denominator times W (`workers/losses.py`),
which is linear in rows. The S ranks of a group together backpropagate the loss of their union, so the
sum of their gradients equals the sum of the S losses they would have computed alone at S = 1.
"""

from __future__ import annotations

import copy
import math
import sys
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor

from r1ray.protocol import TrainBatch, concat_batches
from r1ray.workers.engines.packing import (PackedInputs, PaddedInputs, response_matrices, scoring_head,
                                          split_scores)

# The name under which the Ulysses wrapper is registered in transformers' AttentionInterface. A model
# whose config names it gets no mask from the model (transformers builds masks only for its own kernels);
# the wrapper builds the whole-sequence mask for the inner kernel itself.
ATTENTION_NAME = "r1ray_ulysses"
# The keyword under which the forward pass hands the shard context down to every attention call
# (Hugging Face models pass unknown keyword arguments through to the attention function).
CONTEXT_KWARG = "r1ray_sp"


@dataclass(frozen=True)
class SequenceParallel:
    """This rank's sequence-parallel group: `size` consecutive ranks of the world, this one at `rank`."""

    size: int
    rank: int                                  # rank inside the group
    group: dist.ProcessGroup | None


def sequence_parallel_group(size: int) -> SequenceParallel | None:
    """The group of this rank (None for size 1). A collective: every rank of the world must call it."""
    if size <= 1:
        return None
    world = dist.get_world_size()
    if world % size:
        raise ValueError(f"sequence_parallel_size={size} does not divide the training world of {world} ranks; "
                         f"choose a divisor of {world}")
    me = dist.get_rank()
    mine = None
    for start in range(0, world, size):
        ranks = list(range(start, start + size))
        group = dist.new_group(ranks)           # every rank creates every group, in the same order
        if me in ranks:
            mine = SequenceParallel(size=size, rank=me - start, group=group)
    return mine


def check_heads(config, size: int) -> None:
    """Refuse a model whose heads cannot be split S ways or whose layers need a mask this wrapper
    does not build (sliding-window attention), with one line naming the model's values."""
    heads = config.num_attention_heads
    if heads % size:
        raise ValueError(f"sequence_parallel_size={size} must divide the model's num_attention_heads={heads} "
                         f"(Ulysses gives each rank heads/S of them); choose a divisor of {heads}")
    if "sliding_attention" in (getattr(config, "layer_types", None) or []):
        raise ValueError(f"sequence_parallel_size={size}: the model has sliding-window attention layers, which "
                         f"sequence parallelism does not support; use sequence_parallel_size=1")


def enable(model: torch.nn.Module, size: int) -> None:
    """Route the model's attention through `ulysses_attention`; the kernel it was loaded with (named
    in each forward's `ShardContext`) runs inside."""
    from transformers import AttentionInterface

    check_heads(model.config, size)
    AttentionInterface.register(ATTENTION_NAME, ulysses_attention)
    model.set_attn_implementation(ATTENTION_NAME)
    if model.config._attn_implementation != ATTENTION_NAME:
        raise RuntimeError(f"{type(model).__name__} does not take a registered attention function "
                           f"(transformers' AttentionInterface), so it cannot run sequence parallel")


def gather_rows(batch: TrainBatch, sp: SequenceParallel) -> tuple[TrainBatch, slice]:
    """The union of the group's rows (in group-rank order) and where this rank's own rows sit in it."""
    parts: list[TrainBatch | None] = [None] * sp.size
    dist.all_gather_object(parts, batch, group=sp.group)
    start = sum(len(p) for p in parts[:sp.rank])
    return concat_batches([p for p in parts if len(p)] or [batch]), slice(start, start + len(batch))


# --- attention ---------------------------------------------------------------------------------------


@dataclass
class ShardContext:
    """What every attention call of one forward needs beyond its own shard (kept for the backward's
    recomputation under activation checkpointing)."""

    sp: SequenceParallel
    inner: str                                 # the model's own attention kernel: sdpa, eager, flash_attention_2
    position_ids: Tensor                       # (b, N) the whole rows' positions
    attention_mask: Tensor | None              # (b, N) 1 on real tokens; None: packed (positions restart)
    masks: dict = field(default_factory=dict)  # inner kernel's whole-sequence mask by (dtype, device)

    def mask(self, config, dtype: torch.dtype, device: torch.device):
        """The mask the inner kernel would have been given for the unsplit rows, built once per forward."""
        key = (dtype, device)
        if key not in self.masks:
            from transformers.masking_utils import create_causal_mask

            inner = copy.copy(config)
            inner._attn_implementation = self.inner
            rows, width = self.position_ids.shape
            self.masks[key] = create_causal_mask(
                config=inner, inputs_embeds=torch.empty((rows, width, 0), dtype=dtype, device=device),
                attention_mask=self.attention_mask, past_key_values=None, position_ids=self.position_ids)
        return self.masks[key]


def _all_to_all(x: Tensor, group) -> Tensor:
    """(S, ...) -> (S, ...): slice j goes to rank j; slice j of the result came from rank j. The functional
    collective differentiates (its backward is the reverse all-to-all) and runs on gloo and NCCL alike."""
    return funcol.all_to_all_single_autograd(x, None, None, group)


def _columns_to_heads(x: Tensor, sp: SequenceParallel) -> Tensor:
    """(b, h, c, d) all heads of this rank's c columns -> (b, h/S, S*c, d) this rank's heads, all columns."""
    b, h, c, d = x.shape
    parts = x.reshape(b, sp.size, h // sp.size, c, d).transpose(0, 1).contiguous()
    got = _all_to_all(parts, sp.group)                       # got[j]: my heads of rank j's columns
    return got.permute(1, 2, 0, 3, 4).reshape(b, h // sp.size, sp.size * c, d)


def _heads_to_columns(x: Tensor, sp: SequenceParallel) -> Tensor:
    """(b, S*c, h/S, d) attention output of this rank's heads -> (b, c, h, d) all heads of its columns."""
    b, n, hs, d = x.shape
    c = n // sp.size
    parts = x.reshape(b, sp.size, c, hs, d).transpose(0, 1).contiguous()
    got = _all_to_all(parts, sp.group)                       # got[j]: rank j's heads of my columns
    return got.permute(1, 2, 0, 3, 4).reshape(b, c, sp.size * hs, d)


def ulysses_attention(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask,
                      **kwargs) -> tuple[Tensor, None]:
    """An AttentionInterface function: (b, h, c, d) shards in, (b, c, h, d) out, whole-sequence attention."""
    ctx: ShardContext = kwargs.pop(CONTEXT_KWARG)
    sp = ctx.sp
    groups = query.shape[1] // key.shape[1]
    if key.shape[1] % sp.size:
        # Fewer KV heads than ranks (or not a multiple): give every query head its own copy, so that each
        # rank's query heads find their KV heads among the ones it receives.
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
        groups = 1
    q, k, v = (_columns_to_heads(t, sp) for t in (query, key, value))
    inner = _inner_function(module, ctx.inner)
    kwargs["position_ids"] = ctx.position_ids                  # flash-attention finds packed rows from them
    saved = getattr(module, "num_key_value_groups", None)
    module.num_key_value_groups = groups
    try:
        out, _ = inner(module, q, k, v, ctx.mask(module.config, q.dtype, q.device), **kwargs)
    finally:
        module.num_key_value_groups = saved
    return _heads_to_columns(out, sp), None


def _inner_function(module: torch.nn.Module, name: str):
    from transformers import AttentionInterface

    if name == "eager":
        # Each model file has its own eager attention (transformers registers none globally).
        return sys.modules[type(module).__module__].eager_attention_forward
    return AttentionInterface()[name]


# --- one micro-batch, split by columns -----------------------------------------------------------------


class _GatherPieces(torch.autograd.Function):
    """Concatenate every group rank's piece (sizes `counts`, known to all); the backward keeps the
    rank's own slice, since every rank computes the same loss from the concatenation."""

    @staticmethod
    def forward(ctx, piece: Tensor, counts: list[int], sp: SequenceParallel) -> Tensor:
        ctx.span = (sum(counts[:sp.rank]), counts[sp.rank])
        longest = max(max(counts), 1)
        padded = torch.zeros(longest, dtype=piece.dtype, device=piece.device)
        padded[:len(piece)] = piece
        parts = [torch.empty_like(padded) for _ in range(sp.size)]
        dist.all_gather(parts, padded, group=sp.group)
        return torch.cat([p[:n] for p, n in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: Tensor):
        start, count = ctx.span
        return grad[start:start + count], None, None


@dataclass
class _WholeRows:
    """The micro-batch laid out as whole rows, padded to a multiple of S columns."""

    input_ids: Tensor          # (b, N)
    position_ids: Tensor       # (b, N)
    attention_mask: Tensor | None  # (b, N), None when packed
    kept: Tensor               # (b, N) bool: the logit at this column predicts a response token
    targets: Tensor            # (b, N) int64: that token (0 elsewhere)


def _whole_rows(inputs: PackedInputs | PaddedInputs, size: int) -> _WholeRows:
    if isinstance(inputs, PaddedInputs):
        ids, pos, att = inputs.input_ids, inputs.position_ids, inputs.attention_mask
        kept = torch.zeros(ids.shape, dtype=torch.bool)
        start = inputs.prompt_width - 1                     # column P - 1 + j predicts response token j
        for row, n in enumerate(inputs.response_lens.tolist()):
            kept[row, start:start + n] = True
    else:
        ids, pos, att = inputs.input_ids, inputs.position_ids, None
        kept = torch.zeros(ids.shape, dtype=torch.bool)
        kept[0, inputs.keep] = True
    targets = torch.zeros(ids.shape, dtype=torch.int64)
    targets[kept] = inputs.targets                          # row-major, the order of `inputs.targets`
    extra = math.ceil(max(ids.shape[1], 1) / size) * size - ids.shape[1]
    if extra:
        # Columns appended to the end of every row: causal attention hides them from every real token,
        # and none is kept, so they change no result. They continue the last sequence (attended, positions
        # going on) rather than being masked out: a mask that is not all ones, or a new packed sequence,
        # would make the kernel materialise the (N, N) mask that the unsplit rows did not need.
        pad = lambda t, v: torch.cat([t, torch.full((t.shape[0], extra), v, dtype=t.dtype)], dim=1)  # noqa: E731
        ids, targets, kept = pad(ids, 0), pad(targets, 0), pad(kept, False)
        att = pad(att, 1) if att is not None else None
        tail = torch.arange(1, extra + 1, dtype=pos.dtype)[None, :].expand(pos.shape[0], -1)
        pos = torch.cat([pos, pos[:, -1:] + tail], dim=1)
    return _WholeRows(ids, pos, att, kept, targets)


def forward_response_sp(model: torch.nn.Module, inputs: PackedInputs | PaddedInputs, device: torch.device,
                        temperature: float, with_entropy: bool, entropy_grad: bool,
                        sp: SequenceParallel, inner: str) -> tuple[Tensor, Tensor | None]:
    """`packing.forward_response` with the columns split over the group: the same (B, R) results."""
    whole = _whole_rows(inputs, sp.size)
    width = whole.input_ids.shape[1] // sp.size
    mine = slice(sp.rank * width, (sp.rank + 1) * width)
    kept = whole.kept[:, mine]                                           # (b, c)
    columns = kept.any(0).nonzero().squeeze(1)                           # columns any row keeps
    ctx = ShardContext(sp=sp, inner=inner, position_ids=whole.position_ids.to(device),
                       attention_mask=whole.attention_mask.to(device) if whole.attention_mask is not None else None)
    targets = whole.targets[:, mine][:, columns].to(device)             # (b, kept columns)
    with scoring_head(model, targets, temperature, with_entropy, entropy_grad, kept[:, columns].to(device)):
        out = model(input_ids=whole.input_ids[:, mine].to(device),
                    position_ids=whole.position_ids[:, mine].to(device), logits_to_keep=columns.to(device),
                    use_cache=False, **{CONTEXT_KWARG: ctx})
    scores = out.logits[kept[:, columns].to(device)]                     # (k, 2) row-major in my columns
    # Gathered pieces come shard by shard; `order` maps them back to the row-major order of all kept columns.
    counts = [int(whole.kept[:, j * width:(j + 1) * width].sum()) for j in range(sp.size)]
    index = torch.zeros(whole.kept.shape, dtype=torch.int64)
    index[whole.kept] = torch.arange(int(whole.kept.sum()))
    order = torch.cat([index[:, j * width:(j + 1) * width][whole.kept[:, j * width:(j + 1) * width]]
                       for j in range(sp.size)])
    back = torch.argsort(order).to(device)
    logp, ent = split_scores(scores, with_entropy, entropy_grad)
    logp = _GatherPieces.apply(logp, counts, sp)[back]
    ent = _GatherPieces.apply(ent, counts, sp)[back] if ent is not None else None
    return response_matrices(logp, ent, inputs, device)


def dummy_forward_sp(model: torch.nn.Module, device: torch.device, sp: SequenceParallel, inner: str) -> Tensor:
    """A zero loss from a one-token-per-rank forward: the passes a rank runs when it has no micro-batch
    left still join every all-to-all of the group (and the parameter collectives of the world)."""
    positions = torch.arange(sp.size)[None, :]
    ctx = ShardContext(sp=sp, inner=inner, position_ids=positions.to(device), attention_mask=None)
    out = model(input_ids=torch.zeros(1, 1, dtype=torch.int64, device=device),
                position_ids=positions[:, sp.rank:sp.rank + 1].to(device), use_cache=False, **{CONTEXT_KWARG: ctx})
    return out.logits.sum() * 0.0
