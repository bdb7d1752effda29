"""RolloutEngine on vLLM (GPU only), written against vLLM's V1 offline API.

vLLM runs the model in its own worker process(es), so the weight-sync receiver must live there: the
`R1RayWorkerExtension` below is mixed into vLLM's GPU worker through `worker_extension_cls`, and this
engine reaches it with `LLM.collective_rpc`. With tensor parallelism every TP worker of an engine joins
the weight-sync group as its own rank (1 + engine_index * tp + tp_rank) and receives the full weights;
vLLM's `load_weights` keeps the shard it owns. Sleep mode (`enable_sleep_mode`) frees weights and KV
cache while the actor trains on the same GPUs.
"""

from __future__ import annotations

import logging
import torch

from r1ray.protocol import PromptBatch, RolloutBatch, SamplingParams, pack, pad_right

logger = logging.getLogger(__name__)


class R1RayWorkerExtension:
    """Methods added to vLLM's worker class; `self` is the vLLM worker (has `model_runner`, `rank`)."""

    def r1ray_init_weight_sync(self, spec, rank_offset: int) -> None:
        from r1ray.workers.weight_sync import SyncGroup

        self._r1ray_sync = SyncGroup(spec, rank_offset + self.rank, torch.device("cuda", torch.cuda.current_device()))

    def r1ray_receive_weights(self, manifest) -> str:
        from r1ray.workers.weight_sync import Checksum

        # vLLM fuses q/k/v and gate/up projections under other names, so the check hashes the tensors as
        # received rather than reading them back from the model.
        hasher = Checksum(len(manifest))
        stream = self._r1ray_sync.receive(manifest)
        self.model_runner.model.load_weights(weights=hasher.wrap(stream))
        return hasher.hexdigest()


class VLLMRolloutEngine:
    def __init__(self, model_path: str, *, dtype: str, tensor_parallel_size: int, gpu_memory_utilization: float,
                 max_model_len: int, seed: int, enable_sleep_mode: bool, trust_remote_code: bool = False):
        from vllm import LLM

        self.llm = LLM(model=model_path, dtype=dtype, tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, seed=seed,
                       enable_sleep_mode=enable_sleep_mode, trust_remote_code=trust_remote_code,
                       worker_extension_cls="r1ray.workers.engines.vllm_rollout.R1RayWorkerExtension")
        self.tokenizer = self.llm.get_tokenizer()
        self.tp = tensor_parallel_size
        self.enable_sleep_mode = enable_sleep_mode

    def generate(self, prompts: PromptBatch, sampling: SamplingParams) -> RolloutBatch:
        from vllm import SamplingParams as VSampling

        params = VSampling(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                           top_k=sampling.top_k if sampling.top_k > 0 else -1, max_tokens=sampling.max_new_tokens,
                           logprobs=0, seed=sampling.seed)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompts.prompt_ids], params, use_tqdm=False)
        rows, responses, logprobs, truncated = [], [], [], []
        for i, out in enumerate(outputs):
            for completion in out.outputs:
                ids = list(completion.token_ids)
                rows.append(i)
                responses.append(ids)
                logprobs.append(torch.tensor([lp[t].logprob for lp, t in zip(completion.logprobs, ids)]))
                truncated.append(completion.finish_reason == "length")
        tokens, cu = pack([prompts.prompt_ids[i] + r for i, r in zip(rows, responses)])
        return RolloutBatch(
            tokens=tokens, cu_seqlens=cu,
            prompt_lens=torch.tensor([len(prompts.prompt_ids[i]) for i in rows], dtype=torch.int64),
            truncated=torch.tensor(truncated, dtype=torch.bool), rollout_logprobs=pad_right(logprobs, 0.0),
            response_texts=self.tokenizer.batch_decode(responses, skip_special_tokens=True),
            ground_truths=[prompts.ground_truths[i] for i in rows], data_sources=[prompts.data_sources[i] for i in rows],
            extra_infos=[prompts.extra_infos[i] for i in rows], group_size=sampling.n)

    def init_weight_sync(self, spec, engine_index: int) -> None:
        self.llm.collective_rpc("r1ray_init_weight_sync", args=(spec, 1 + engine_index * self.tp))

    def receive_weights(self, manifest) -> str:
        return self.llm.collective_rpc("r1ray_receive_weights", args=(manifest,))[0]

    def sleep(self) -> None:
        if self.enable_sleep_mode:
            self.llm.sleep(level=1)

    def wake(self) -> None:
        if self.enable_sleep_mode:
            self.llm.wake_up()
