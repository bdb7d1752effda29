"""RolloutEngine on Hugging Face `generate`: the CPU default (tests, quickstart) and a simple GPU path.

Prompts are repeated n times so that a group's samples are adjacent rows, left-padded per generate call,
and sampled with the model's raw logits scaled by the temperature; the logprob of each sampled token
under that same distribution is kept as the rollout logprob (the actor recomputes it; the gap is logged).
The engine receives the weight sync itself (it lives in the rollout worker's process) and fingerprints
the weights it holds after loading, so a loader that drops or misplaces a tensor is caught.
"""

from __future__ import annotations

import logging
from typing import Iterator, Sequence

import torch
from torch import Tensor

from r1ray.models import eos_ids, load_model_and_tokenizer
from r1ray.protocol import PromptBatch, RolloutBatch, SamplingParams, assemble_rollout, derive_seed
from r1ray.workers.engines.base import FingerprintTable, RolloutSpec
from r1ray.workers.fingerprint import Fingerprints
from r1ray.workers.weight_sync import DTYPES, Manifest, SyncGroup, SyncGroupSpec

logger = logging.getLogger(__name__)


class HFRolloutEngine:
    def __init__(self, spec: RolloutSpec, device: torch.device):
        self.spec = spec
        self.device = device
        self.model, self.tokenizer = load_model_and_tokenizer(
            spec.model_path, dtype=spec.dtype, attn_implementation=spec.attn_implementation,
            trust_remote_code=spec.trust_remote_code)
        self.model.to(device).eval()
        self.eos_ids = eos_ids(spec.model_path, self.tokenizer)
        self.sync: SyncGroup | None = None

    @torch.no_grad()
    def generate(self, prompts: PromptBatch, sampling: SamplingParams) -> RolloutBatch:
        rows = [i for i in range(len(prompts)) for _ in range(sampling.n)]
        responses: list[list[int]] = []
        logprobs: list[Tensor] = []
        truncated: list[bool] = []
        batch = self.spec.generate_batch_size
        for start in range(0, len(rows), batch):
            chunk = [prompts.prompt_ids[i] for i in rows[start:start + batch]]
            # One generator draw per chunk: rows of a chunk get different noise, chunks their own seed.
            torch.manual_seed(derive_seed(sampling.seed, start))
            r, lp, tr = self._generate_chunk(chunk, sampling)
            responses += r
            logprobs += lp
            truncated += tr
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        return assemble_rollout(prompts, sampling.n, responses, logprobs, truncated, texts)

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

    # ---- weight sync ------------------------------------------------------------------------------
    def init_weight_sync(self, members: list[dict]) -> None:
        (member,) = members                  # no tensor parallelism: one receiving process
        self.sync = SyncGroup(SyncGroupSpec.from_dict(member["spec"]), member["rank"], self.device)

    def receive_weights(self, manifest: Manifest) -> list[FingerprintTable]:
        state = self.model.state_dict()
        with torch.no_grad():
            for name, tensor in self.sync.receive(manifest):
                state[name].copy_(tensor)
        # Fingerprint what the model now holds (tied weights included), not what arrived.
        prints = Fingerprints(len(manifest), self.device)
        for i, (name, _, dtype) in enumerate(manifest):
            prints.add(i, state[name].to(DTYPES[dtype]))
        return [prints.tolist()]

    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        """The weights this engine holds, by Hugging Face name (tests compare them with the actor's)."""
        yield from self.model.named_parameters()

    # ---- colocation -------------------------------------------------------------------------------
    def reset_cache(self) -> None:
        """generate() keeps no KV cache between calls: nothing to forget."""

    def sleep(self) -> None:
        if self.device.type == "cuda":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def wake(self, tags: Sequence[str]) -> None:
        if self.device.type == "cuda" and "weights" in tags:
            self.model.to(self.device)

    def close(self) -> None:
        if self.sync is not None:
            self.sync.close()
            self.sync = None
