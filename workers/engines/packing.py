"""Training-engine forward passes that cost what their tokens cost, and logits only where they are needed.

Two layouts of a micro-batch, one result ((b, R) logprobs of the response tokens):
- packed (`pack_for_forward`): sequences end to end in one (1, S) row, position ids restarting at 0 per
  sequence. With a variable-length kernel (flash-attention varlen) attention costs the sum of each
  sequence's square and no token is padding. With sdpa or eager, Hugging Face builds an S x S mask and
  attention costs S^2: 74 sequences of 110 tokens took 8.6x longer packed than padded on CPU.
- padded (`pad_for_forward`): prompts left-padded to the micro-batch's longest prompt, responses
  right-padded to its longest response, so every response starts in the same column. The engine cuts
  micro-batches from rows of similar length (`padded_chunks`), so little is padding.
`use_packing` picks one from the attention kernel. Either way the output layer runs only at positions
that predict response tokens (`logits_to_keep` as an index tensor), which keeps the (S, vocab) logits of
long prompts out of memory, and while the engine's forward runs it scores instead of returning logits
(`scoring_head`): `LOGITS_CHUNK_TOKENS` positions at a time it computes their logits, upcasts them to
float32 and returns logprob and entropy, each chunk one checkpointed function from hidden states to
scores, so no (tokens, vocab) logits tensor is ever whole or kept for the backward (unless it is small:
`LOGITS_RECOMPUTE_BYTES`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Iterator

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

# The scoring head's chunk size and when it keeps logits rather than recomputing them are defined beside
# the memory plan that counts their bytes.
from r1ray.memory_plan import LOGITS_CHUNK_TOKENS, LOGITS_RECOMPUTE_BYTES
from r1ray.protocol import length_mask, unpack


# Attention kernels whose Hugging Face integration runs packed rows (restarting position ids) as
# separate sequences at the cost of each one; any other kernel attends over the whole packed row.
VARLEN_KERNELS = ("flash_attention_2", "flash_attention_3")


def use_packing(padding_free: str, attn_implementation: str) -> bool:
    """`actor.padding_free` (auto | on | off) and the kernel -> pack (True) or pad (False)."""
    if padding_free == "auto":
        return attn_implementation in VARLEN_KERNELS
    return padding_free == "on"


@dataclass
class PackedInputs:
    input_ids: Tensor        # (1, S) int64, all sequences end to end
    position_ids: Tensor     # (1, S) int64, restarting at 0 per sequence
    keep: Tensor             # (K,) int64 positions whose logits predict a response token
    targets: Tensor          # (K,) int64 the response token each kept position predicts
    response_lens: Tensor    # (B,) int64
    width: int               # R of the (B, R) outputs

    def head_targets(self) -> tuple[Tensor, Tensor | None]:
        """(1, K) the target of each position the output layer sees; None: every position is scored."""
        return self.targets[None, :], None

    def logits(self, model: torch.nn.Module, device: torch.device) -> Tensor:
        """(K, ...) the output layer's result at the kept positions, in the order of `targets`: logits
        (K, V), or (K, 2) scores under `scoring_head`."""
        out = model(input_ids=self.input_ids.to(device), position_ids=self.position_ids.to(device),
                    logits_to_keep=self.keep.to(device), use_cache=False)
        return out.logits[0]


@dataclass
class PaddedInputs:
    input_ids: Tensor        # (b, P + Rm - 1) int64: prompt left-padded to P, response right-padded to Rm
    attention_mask: Tensor   # (b, P + Rm - 1) int64, 1 on real tokens
    position_ids: Tensor     # (b, P + Rm - 1) int64, 0 at each row's first real token
    prompt_width: int        # P: every response starts at column P
    targets: Tensor          # (K,) int64 response tokens, row-major (the order of the (b, Rm) mask)
    response_lens: Tensor    # (b,) int64
    width: int               # R of the (b, R) outputs (>= Rm, the micro-batch's longest response)

    def head_targets(self) -> tuple[Tensor, Tensor | None]:
        """(b, Rm) the target of each position the output layer sees, and which of them to score (the
        columns past a shorter row's response are padding)."""
        longest = int(self.response_lens.max()) if len(self.response_lens) else 0
        select = length_mask(self.response_lens, longest).bool()
        out = torch.zeros(select.shape, dtype=torch.int64)
        out[select] = self.targets
        return out, select

    def logits(self, model: torch.nn.Module, device: torch.device) -> Tensor:
        """(K, ...) the output layer's result at the real response positions (row-major): logits (K, V),
        or (K, 2) scores under `scoring_head`."""
        longest = int(self.response_lens.max()) if len(self.response_lens) else 0
        # Column P - 1 + j predicts response token j: the same columns for every row.
        keep = torch.arange(self.prompt_width - 1, self.prompt_width - 1 + longest, device=device)
        out = model(input_ids=self.input_ids.to(device), attention_mask=self.attention_mask.to(device),
                    position_ids=self.position_ids.to(device), logits_to_keep=keep, use_cache=False)
        mask = length_mask(self.response_lens, longest).to(device).bool()      # (b, Rm)
        return out.logits[mask]


def pad_for_forward(tokens: Tensor, cu_seqlens: Tensor, prompt_lens: Tensor, width: int,
                    pad_id: int = 0) -> PaddedInputs:
    """Lay out b sequences (packed `tokens` cut by `cu_seqlens`) as one padded (b, P + Rm - 1) batch.

    The last response token is only ever a target, never an input, so it is left out of the inputs.
    """
    seqs = unpack(tokens, cu_seqlens)
    response_lens = (cu_seqlens[1:] - cu_seqlens[:-1]) - prompt_lens
    prompt_width = int(prompt_lens.max()) if len(seqs) else 1
    longest = int(response_lens.max()) if len(seqs) else 0
    columns = prompt_width + max(longest, 1) - 1
    input_ids = torch.full((len(seqs), columns), pad_id, dtype=torch.int64)
    attention = torch.zeros((len(seqs), columns), dtype=torch.int64)
    targets = []
    for row, (seq, p) in enumerate(zip(seqs, prompt_lens.tolist())):
        inputs = seq[:-1] if len(seq) > p else seq         # drop the final target (kept when no response)
        start = prompt_width - p
        input_ids[row, start:start + len(inputs)] = inputs
        attention[row, start:start + len(inputs)] = 1
        targets.append(seq[p:])
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    return PaddedInputs(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                        prompt_width=prompt_width,
                        targets=torch.cat(targets) if targets else torch.zeros(0, dtype=torch.int64),
                        response_lens=response_lens, width=width)


def pack_for_forward(tokens: Tensor, cu_seqlens: Tensor, prompt_lens: Tensor, width: int) -> PackedInputs:
    """Lay out B sequences (packed `tokens` cut by `cu_seqlens`) for one packed forward pass."""
    seqs = unpack(tokens, cu_seqlens)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1])
    positions = torch.cat([torch.arange(int(n)) for n in lengths]) if len(seqs) else torch.zeros(0, dtype=torch.int64)
    keep, targets = [], []
    for start, seq, p in zip(cu_seqlens[:-1].tolist(), seqs, prompt_lens.tolist()):
        # The logit at position j predicts token j + 1; response tokens are p .. len-1.
        keep.append(torch.arange(start + p - 1, start + len(seq) - 1))
        targets.append(seq[p:])
    return PackedInputs(
        input_ids=tokens[None, :], position_ids=positions[None, :],
        keep=torch.cat(keep) if keep else torch.zeros(0, dtype=torch.int64),
        targets=torch.cat(targets) if targets else torch.zeros(0, dtype=torch.int64),
        response_lens=lengths - prompt_lens, width=width)


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    """Logits of the sampling distribution in at least float32 (T <= 0 means greedy: scored at T = 1)."""
    scaled = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return scaled / temperature if temperature > 0 and temperature != 1.0 else scaled


def _chunk_logprobs(logits: Tensor, targets: Tensor, temperature: float) -> Tensor:
    scaled = _scaled(logits, temperature)
    return scaled.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(scaled, dim=-1)


def _chunk_entropy(logits: Tensor, temperature: float) -> Tensor:
    logp = torch.log_softmax(_scaled(logits, temperature), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def forward_response(model: torch.nn.Module, packed: PackedInputs | PaddedInputs, device: torch.device,
                     temperature: float, with_entropy: bool,
                     entropy_grad: bool = False) -> tuple[Tensor, Tensor | None]:
    """Logprobs (and optionally entropy) of every response token, each (B, R), on `device`.

    Entropy carries gradients only with `entropy_grad` (an entropy bonus in the loss); as a metric it is
    computed without them, so its softmax is never part of the backward graph.
    """
    targets, select = packed.head_targets()
    with scoring_head(model, targets.to(device), temperature, with_entropy, entropy_grad,
                      select.to(device) if select is not None else None):
        scores = packed.logits(model, device)                  # (K, 2) float32
    return response_matrices(*split_scores(scores, with_entropy, entropy_grad), packed, device)


def split_scores(scores: Tensor, with_entropy: bool, entropy_grad: bool) -> tuple[Tensor, Tensor | None]:
    """(K, 2) scores -> logprobs (K,), entropy (K,) or None; the entropy leaves the graph unless it is a
    loss term (`entropy_grad`), so a metric never holds on to the backward."""
    ent = scores[:, 1] if with_entropy else None
    if ent is not None and not entropy_grad:
        ent = ent.detach()
    return scores[:, 0], ent


def output_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model's output layer (lm_head), also inside a DeepSpeed engine (`.module`)."""
    return getattr(model, "module", model).get_output_embeddings()


@contextmanager
def scoring_head(model: torch.nn.Module, targets: Tensor, temperature: float, with_entropy: bool,
                 entropy_grad: bool, select: Tensor | None = None) -> Iterator[None]:
    """While active, the model's output layer returns (..., 2) = (log p(target), entropy) in float32 at
    the positions of its input that `select` keeps (all when None; zeros elsewhere), `targets` giving each
    position's target (both the input's leading shape), instead of (..., V) logits. Entropy is 0 without
    `with_entropy`, and carries gradients only with `entropy_grad`.

    Only the layer's `forward` is swapped, on the instance: its parameters, their names and the hooks
    FSDP2 and DeepSpeed hang on the module stay as they are. Each chunk's backward recomputes its logits
    from the hidden states it saved, reading the weight again then, when the engines have gathered it
    for the backward.
    """
    head = output_layer(model)

    def score(hidden: Tensor) -> Tensor:
        flat = hidden.reshape(-1, hidden.shape[-1])
        if select is None:
            scores = _score_positions(head, flat, targets.reshape(-1), temperature, with_entropy, entropy_grad)
            return scores.reshape(*hidden.shape[:-1], 2)
        keep = select.reshape(-1)
        scores = _score_positions(head, flat[keep], targets.reshape(-1)[keep], temperature, with_entropy,
                                  entropy_grad)
        out = torch.zeros(len(keep), 2, dtype=scores.dtype, device=scores.device)
        return out.masked_scatter(keep[:, None], scores).reshape(*hidden.shape[:-1], 2)

    head.forward = score
    try:
        yield
    finally:
        del head.forward


def _score_positions(head: torch.nn.Module, flat: Tensor, flat_targets: Tensor, temperature: float,
                     with_entropy: bool, entropy_grad: bool) -> Tensor:
    """(N, D) hidden states, (N,) targets -> (N, 2) scores, `LOGITS_CHUNK_TOKENS` rows at a time."""
    grad = torch.is_grad_enabled() and (flat.requires_grad or head.weight.requires_grad)
    recompute = grad and flat.shape[0] * head.weight.shape[0] * 4 > LOGITS_RECOMPUTE_BYTES
    fn = partial(_score_chunk, head, temperature, with_entropy, entropy_grad)
    parts = []
    # An empty input still splits into one empty chunk, so the scores stay in the graph: a rank with no
    # response token must backpropagate too (its shards' reductions and all-to-alls wait for it).
    for pieces in zip(flat.split(LOGITS_CHUNK_TOKENS), flat_targets.split(LOGITS_CHUNK_TOKENS)):
        parts.append(checkpoint(fn, *pieces, use_reentrant=False, preserve_rng_state=False) if recompute
                     else fn(*pieces))
    return torch.cat(parts)


def _score_chunk(head: torch.nn.Module, temperature: float, with_entropy: bool, entropy_grad: bool,
                 hidden: Tensor, targets: Tensor) -> Tensor:
    """(k, D), (k,) -> (k, 2) float32: the chunk's logits exist only inside this function."""
    logits = torch.nn.functional.linear(hidden, head.weight, head.bias)
    logp = _chunk_logprobs(logits, targets, temperature)
    if not with_entropy:
        return torch.stack([logp, torch.zeros_like(logp)], dim=-1)
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        ent = _chunk_entropy(logits, temperature)
    return torch.stack([logp, ent], dim=-1)


def response_matrices(logp: Tensor, ent: Tensor | None, packed: PackedInputs | PaddedInputs,
                      device: torch.device) -> tuple[Tensor, Tensor | None]:
    """(K,) values in the order of `packed.targets` -> (B, R) matrices, zero past each response."""
    mask = length_mask(packed.response_lens, packed.width).to(device).bool()
    logp_mat = torch.zeros(mask.shape, dtype=logp.dtype, device=device).masked_scatter(mask, logp)
    ent_mat = None
    if ent is not None:
        ent_mat = torch.zeros(mask.shape, dtype=ent.dtype, device=device).masked_scatter(mask, ent)
    return logp_mat, ent_mat


def balanced_chunks(lengths: list[int], k: int) -> list[list[int]]:
    """Rows -> exactly k micro-batches with near-equal token counts (longest-first into the lightest bin).

    Data-parallel ranks must run the same number of forward passes (each one all-gathers shards), so
    every rank cuts its rows into the same k, agreed through an all-reduce of each rank's need. Rows keep
    their original order inside a bin; a bin may be empty when a rank has fewer rows than k.
    """
    bins: list[list[int]] = [[] for _ in range(k)]
    load = [0] * k
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        lightest = min(range(k), key=lambda b: load[b])
        bins[lightest].append(i)
        load[lightest] += lengths[i]
    return [sorted(b) for b in bins]


def padded_chunks(prompt_lens: list[int], response_lens: list[int], budget: int) -> list[list[int]]:
    """Rows -> micro-batches of similar-length rows whose padded size fits `budget` tokens.

    A micro-batch costs rows x (longest prompt + longest response) once padded (`pad_for_forward`);
    rows sorted by response then prompt length are cut greedily, so a micro-batch holds rows of about
    the same length and the budget counts the padding too. A row longer than the budget gets a
    micro-batch of its own. Rows keep their original order inside a micro-batch.
    """
    order = sorted(range(len(prompt_lens)), key=lambda i: (response_lens[i], prompt_lens[i]))
    chunks: list[list[int]] = []
    current: list[int] = []
    widest_p = widest_r = 0
    for i in order:
        p, r = max(widest_p, prompt_lens[i]), max(widest_r, response_lens[i])
        if current and (len(current) + 1) * (p + r) > budget:
            chunks.append(sorted(current))
            current, p, r = [], prompt_lens[i], response_lens[i]
        current.append(i)
        widest_p, widest_r = p, r
    if current:
        chunks.append(sorted(current))
    return chunks
