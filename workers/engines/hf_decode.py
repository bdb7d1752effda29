"""The Hugging Face rollout engine's decode loop: prefill each distinct prompt once, then sample with a KV
cache from which finished rows are dropped.

`model.generate` would need every prompt repeated n times (n prefills of one prompt), keeps computing rows
that already stopped until the longest row ends, and its `output_logits` stacks (b, L, V) float32 logits.
Here a chunk's distinct prompts are prefilled together, their cache and last logits are copied to the
chunk's rows, and each decode step runs only the rows still live; only the sampled token's logprob is kept.
Sampling is that of `generate`: float32 logits over the temperature, then top-k, then top-p, as its
TopK/TopP logits warpers filter them, and `torch.multinomial` drawing from the caller's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel

from r1ray.protocol import SamplingParams
from r1ray.workers.engines.hf_cache import growing_cache

# Finished rows leave the batch once they are this share of it: dropping rows re-indexes the whole KV
# cache, and rows end at almost every step of a long sampled batch, so dropping them one step at a time
# cost more (cache copies) than it saved; an ended row kept a few more steps computes one token each.
COMPACT_AT = 0.125


@dataclass
class DecodedChunk:
    """The rows of one chunk, in the order of the chunk's rows."""

    responses: list[list[int]]      # b token lists, each ending at its first eos (included) or at the budget
    logprobs: list[Tensor]          # b float32 (len(response),): log_softmax(logits / T) at the sampled token
    truncated: list[bool]           # b: no eos within max_new_tokens


def filter_logits(scaled: Tensor, top_k: int, top_p: float) -> Tensor:
    """Top-k (k > 0), then top-p (p < 1) on temperature-scaled logits (b, V) -> (b, V), cut entries -inf.

    The same cuts as transformers' TopKLogitsWarper and TopPLogitsWarper (min_tokens_to_keep=1), so sampling
    matches what `generate(do_sample=True, ...)` did before this loop replaced it.
    """
    if top_k > 0:
        kth = torch.topk(scaled, min(top_k, scaled.size(-1))).values[..., -1:]     # (b, 1)
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p          # (b, V), ascending
        remove[..., -1:] = False                                                    # keep the top token
        scaled = scaled.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    return scaled


def sample_tokens(logits: Tensor, sampling: SamplingParams,
                  generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Next tokens (b,) and their rollout logprobs (b,) from the last position's float32 logits (b, V).

    The logprob is taken from the temperature-scaled distribution before top-k/top-p renormalisation:
    that is what the actor recomputes (greedy is scored at T=1).
    """
    greedy = sampling.temperature <= 0
    scaled = logits if greedy else logits / sampling.temperature
    if greedy:
        tokens = scaled.argmax(dim=-1)
    else:
        probs = filter_logits(scaled, sampling.top_k, sampling.top_p).softmax(dim=-1)
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    logprobs = scaled.gather(-1, tokens[:, None]).squeeze(1) - torch.logsumexp(scaled, dim=-1)
    return tokens, logprobs


def _left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)          # (P, W)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)   # (P, W)
    return ids, mask


def _positions(mask: Tensor) -> Tensor:
    """Position ids of left-padded rows (b, W): 0 at each row's first real token; pads get 1, as in
    `generate` (they are masked, so any value works)."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


@torch.no_grad()
def decode_chunk(model: PreTrainedModel, prompts: list[list[int]], counts: list[int], sampling: SamplingParams,
                 eos_ids: list[int], pad_id: int, generator: torch.Generator) -> DecodedChunk:
    """Sample `counts[i]` responses to `prompts[i]` (rows grouped by prompt, in order).

    `prompts` should be distinct (a repeated prompt is prefilled once per occurrence, which is correct but
    wasted work). The batch shrinks as rows end; the loop stops when the last live row ends or after
    `sampling.max_new_tokens` tokens.
    """
    device = model.device
    ids, mask = _left_pad(prompts, pad_id, device)
    cache = growing_cache(model)
    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    # Copy each prompt's prefill to its rows: the cache, its mask and its last logits.
    expand = torch.repeat_interleave(torch.arange(len(prompts), device=device),
                                     torch.tensor(counts, device=device))             # (b,) prompt of each row
    cache.batch_select_indices(expand)
    mask = mask[expand]                                                              # (b, W)
    logits = out.logits[expand, -1].float()                                          # (b, V)
    next_pos = mask.sum(-1)                                                          # (b,) position of the next token

    rows, budget = len(expand), sampling.max_new_tokens
    tokens = torch.full((rows, budget), pad_id, dtype=torch.long, device=device)     # (b, L)
    token_lp = torch.zeros(rows, budget, dtype=torch.float32, device=device)         # (b, L)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)                     # (b,)
    ended = torch.zeros(rows, dtype=torch.bool, device=device)                       # (b,) an eos was sampled
    live = torch.arange(rows, device=device)                                         # (l,) chunk row of each batch row
    done = torch.zeros(rows, dtype=torch.bool, device=device)                        # (l,) ended, not yet dropped
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    for step in range(budget):
        token, lp = sample_tokens(logits, sampling, generator)                       # (l,), (l,)
        active = (~done).nonzero().squeeze(1)
        rows_now = live[active]
        tokens[rows_now, step], token_lp[rows_now, step] = token[active], lp[active]
        lengths[rows_now] += 1
        stop = torch.isin(token, eos) & ~done                                        # (l,)
        ended[live[stop]] = True
        done |= stop
        finished = int(done.sum())                                                   # one host sync per step
        if step == budget - 1 or finished == len(live):
            break
        if finished >= max(1, int(len(live) * COMPACT_AT)):
            keep = (~done).nonzero().squeeze(1)                                      # (l',) rows still live
            cache.batch_select_indices(keep)
            live, token, mask, next_pos, done = live[keep], token[keep], mask[keep], next_pos[keep], done[keep]
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)                 # (l, W + step + 1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].float()                                           # (l, V)
        next_pos = next_pos + 1

    tokens, token_lp, lengths = tokens.cpu(), token_lp.cpu(), lengths.tolist()
    return DecodedChunk(responses=[row[:n].tolist() for row, n in zip(tokens, lengths)],
                        logprobs=[row[:n].clone() for row, n in zip(token_lp, lengths)],
                        truncated=(~ended).tolist())
