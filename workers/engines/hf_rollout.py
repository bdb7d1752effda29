"""RolloutEngine on Hugging Face `generate`: the CPU path (tests, quickstart) and a simple GPU path.

Prompts are repeated n times so that a group's samples are adjacent rows, left-padded per generate call,
and sampled with the model's raw logits scaled by the temperature; the logprob of each sampled token
under that same distribution is kept as the rollout logprob (the actor recomputes it; the gap is logged).
"""

from __future__ import annotations

import logging
from typing import Iterator

import torch
from torch import Tensor

from r1ray.models import load_model_and_tokenizer
from r1ray.protocol import PromptBatch, RolloutBatch, SamplingParams, pack, pad_right

logger = logging.getLogger(__name__)


class HFRolloutEngine:
    def __init__(self, model_path: str, *, dtype: str, attn_implementation: str, device: torch.device,
                 generate_batch_size: int, trust_remote_code: bool = False):
        self.device = device
        self.generate_batch_size = generate_batch_size
        self.model, self.tokenizer = load_model_and_tokenizer(
            model_path, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
        self.model.to(device).eval()
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        ids = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids

    @torch.no_grad()
    def generate(self, prompts: PromptBatch, sampling: SamplingParams) -> RolloutBatch:
        rows = [i for i in range(len(prompts)) for _ in range(sampling.n)]
        responses: list[list[int]] = []
        logprobs: list[Tensor] = []
        truncated: list[bool] = []
        for start in range(0, len(rows), self.generate_batch_size):
            chunk = [prompts.prompt_ids[i] for i in rows[start:start + self.generate_batch_size]]
            torch.manual_seed(sampling.seed * 100003 + start)
            r, lp, tr = self._generate_chunk(chunk, sampling)
            responses += r
            logprobs += lp
            truncated += tr
        sequences = [prompts.prompt_ids[i] + resp for i, resp in zip(rows, responses)]
        tokens, cu = pack(sequences)
        return RolloutBatch(
            tokens=tokens, cu_seqlens=cu,
            prompt_lens=torch.tensor([len(prompts.prompt_ids[i]) for i in rows], dtype=torch.int64),
            truncated=torch.tensor(truncated, dtype=torch.bool),
            rollout_logprobs=pad_right(logprobs, 0.0),
            response_texts=self.tokenizer.batch_decode(responses, skip_special_tokens=True),
            ground_truths=[prompts.ground_truths[i] for i in rows],
            data_sources=[prompts.data_sources[i] for i in rows],
            extra_infos=[prompts.extra_infos[i] for i in rows],
            group_size=sampling.n)

    def _generate_chunk(self, chunk: list[list[int]],
                        sampling: SamplingParams) -> tuple[list[list[int]], list[Tensor], list[bool]]:
        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in chunk)
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=self.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=self.device)
        greedy = sampling.temperature <= 0
        out = self.model.generate(
            input_ids=input_ids, attention_mask=attention, max_new_tokens=sampling.max_new_tokens,
            do_sample=not greedy, temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p, top_k=sampling.top_k if sampling.top_k > 0 else None,
            eos_token_id=self.eos_ids, pad_token_id=pad, output_logits=True, return_dict_in_generate=True)
        generated = out.sequences[:, width:].cpu()                        # (b, L)
        logits = torch.stack(out.logits, dim=1).float().cpu()              # (b, L, V) raw logits
        scaled = logits / (sampling.temperature if not greedy else 1.0)
        token_lp = scaled.gather(-1, generated[..., None]).squeeze(-1) - torch.logsumexp(scaled, dim=-1)
        responses, logprobs, truncated = [], [], []
        eos = torch.tensor(self.eos_ids)
        for row, lp in zip(generated, token_lp):
            hits = torch.isin(row, eos).nonzero()
            end = int(hits[0]) + 1 if len(hits) else len(row)
            responses.append(row[:end].tolist())
            logprobs.append(lp[:end])
            truncated.append(not len(hits))
        return responses, logprobs, truncated

    def load_weights(self, weights: Iterator[tuple[str, Tensor]]) -> None:
        state = self.model.state_dict()
        with torch.no_grad():
            for name, tensor in weights:
                state[name].copy_(tensor)

    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        yield from self.model.named_parameters()

    def weight_manifest(self) -> list[tuple[str, tuple[int, ...], str]]:
        return [(n, tuple(p.shape), str(p.dtype)) for n, p in self.model.named_parameters()]

    def sleep(self) -> None:
        if self.device.type == "cuda":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def wake(self) -> None:
        if self.device.type == "cuda":
            self.model.to(self.device)
