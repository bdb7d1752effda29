"""The memory plan's activation estimate next to the measured peak of the same forward + backward.

    python bench/memory_plan.py [--lengths 2048 4096 8192] [--shapes 256x1024 128x1024] [--layers 4]

For each tiny Qwen2 shape (hidden x intermediate, 8 heads, 2 KV heads, float32, sdpa) and sequence
length, one sequence (256-token prompt, the rest response) runs forward and backward through the engine's
own functions in a fresh process (bench/sequence_parallel.py's `measure`), with activation checkpointing
off and on. The measured figure is the peak resident set during the pass above its value before it; glibc
is told to return freed blocks at once (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_), so the resident
set follows the live tensors instead of the heap's high-water mark. The estimate is
`r1ray.memory_plan.activation_bytes` for a micro-batch of that one sequence; the table prints both and
their ratio (> 1: the plan over-estimates, the safe side).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sequence_parallel  # noqa: E402  (the measurement, shared with the sequence-parallel benchmark)


def estimate_mib(model_dir: str, length: int, checkpointing: bool) -> float:
    from r1ray.config_load import load_config
    from r1ray.memory_plan import activation_bytes, model_shape

    cfg = load_config(None, [f"model.path={model_dir}", "data.generate.task=arithmetic",
                             f"actor.gradient_checkpointing={str(checkpointing).lower()}",
                             f"rollout.max_prompt_length={sequence_parallel.PROMPT}",
                             f"rollout.max_response_length={length - sequence_parallel.PROMPT}",
                             f"actor.micro_batch_tokens={length}"], memory=False)
    return activation_bytes(cfg, model_shape(cfg), length, length) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--shapes", nargs="+", default=["256x1024", "128x1024"])
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    os.environ.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")   # inherited by the spawns

    from r1ray.models import build_tiny_model

    print("| hidden x intermediate | tokens | checkpointing | measured MiB | plan MiB | plan / measured |")
    print("| --- | --- | --- | --- | --- | --- |")
    for shape in args.shapes:
        hidden, intermediate = (int(x) for x in shape.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = str(build_tiny_model(f"{tmp}/model", hidden=hidden, layers=args.layers, heads=8, kv_heads=2,
                                             max_position_embeddings=max(args.lengths) + 1,
                                             intermediate=intermediate))
            for length in args.lengths:
                for checkpointing in (False, True):
                    measured = sequence_parallel.measure(1, model_dir, length, checkpointing, 0)[0] * 1024
                    planned = estimate_mib(model_dir, length, checkpointing)
                    print(f"| {shape} | {length} | {'on' if checkpointing else 'off'} | {measured:.0f} | "
                          f"{planned:.0f} | {planned / measured:.2f} |", flush=True)


if __name__ == "__main__":
    main()
