"""RolloutEngine on a Hugging Face model: the CPU default (tests, quickstart) and a simple GPU path.

Rows are cut into chunks of at most `generate_batch_size` sequences, whole groups where they fit; each chunk
prefills its distinct prompts once and samples them with `hf_decode.decode_chunk`, so a group's samples are
adjacent rows. The logprob of each sampled token under the temperature-scaled distribution is kept as the
rollout logprob (the actor recomputes it; the gap is logged).
The engine receives the weight sync itself (it lives in the rollout worker's process) and fingerprints
the weights it holds after loading, so a loader that drops or misplaces a tensor is caught.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import Tensor

from r1ray.models import DTYPES, eos_ids, load_model_and_tokenizer
from r1ray.protocol import PromptBatch, RolloutBatch, SamplingParams, assemble_rollout, derive_seed
from r1ray.workers.engines.base import FingerprintTable, RolloutSpec
from r1ray.workers.engines.hf_decode import decode_chunk
from r1ray.workers.fingerprint import Fingerprints
from r1ray.workers.weight_sync import Manifest, SyncGroup, SyncGroupSpec, device_uuid

logger = logging.getLogger(__name__)


def plan_chunks(num_prompts: int, n: int, batch: int) -> list[tuple[int, list[tuple[int, int]]]]:
    """Cut the num_prompts * n rows (n adjacent rows per prompt) into chunks of at most `batch` rows.

    Returns (first row, [(prompt, rows of it in this chunk), ...]) per chunk. Chunks hold whole groups
    (batch // n of them) so that a prompt is prefilled once; a group larger than `batch` is split over
    several chunks, each of which prefills the prompt once.
    """
    chunks: list[tuple[int, list[tuple[int, int]]]] = []
    if n <= batch:
        per_chunk = batch // n
        for first in range(0, num_prompts, per_chunk):
            chunks.append((first * n, [(i, n) for i in range(first, min(first + per_chunk, num_prompts))]))
        return chunks
    for i in range(num_prompts):
        for offset in range(0, n, batch):
            chunks.append((i * n + offset, [(i, min(batch, n - offset))]))
    return chunks


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
        responses: list[list[int]] = []
        logprobs: list[Tensor] = []
        truncated: list[bool] = []
        for start, groups in plan_chunks(len(prompts), sampling.n, self.spec.generate_batch_size):
            # Each chunk draws from its own seeded generator, so a chunk's samples do not depend on the
            # chunks before it; the rows of a chunk share the stream and so get different noise.
            generator = torch.Generator(device=self.device).manual_seed(derive_seed(sampling.seed, start))
            chunk = decode_chunk(self.model, [prompts.prompt_ids[i] for i, _ in groups], [c for _, c in groups],
                                 sampling, [] if sampling.ignore_eos else self.eos_ids, self.tokenizer.pad_token_id,
                                 generator)
            responses += chunk.responses
            logprobs += chunk.logprobs
            truncated += chunk.truncated
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        return assemble_rollout(prompts, sampling.n, responses, logprobs, truncated, texts)

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

    # ---- colocation -------------------------------------------------------------------------------
    def reset_cache(self) -> None:
        """generate() keeps no KV cache between calls: nothing to forget."""

    def device_uuids(self) -> list[str]:
        return [device_uuid(self.device)]

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
