"""Micro-batch layouts of the training forward, timed in one process: packed row vs padded batches.

    python bench/bench_packing.py [--hidden 128] [--layers 4] [--attn sdpa] [--repeats 2] [--budget 8192]

Three layouts of the same sequences, through the engine's own functions (`workers/engines/packing.py`),
forward + backward of the summed response logprobs (what the actor's update costs) and forward alone (the
reference and old-logprob passes):
- packed: every sequence in one (1, S) row, restarting position ids (`pack_for_forward`). With sdpa or
  eager, Hugging Face attends over the whole row with an S x S mask, so attention costs S^2.
- padded: one (B, P + R) batch, every row padded to the longest (`pad_for_forward` on all rows).
- similar-length micro-batches (the engine's default without a varlen kernel): rows sorted by length and cut
  so that rows x (longest prompt + longest response) fits --budget (`padded_chunks`), each padded alone.
Shapes: "uniform" (74 sequences of about 110 tokens, the GRPO batch that showed packing 8.6x slower) and
"long-tailed" (64 sequences, 32-token prompts, exponential response lengths up to 960, as RL rollouts are).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from typing import Callable

import torch

from r1ray.models import build_tiny_model, load_model_and_tokenizer
from r1ray.protocol import pack, select_rows, TrainBatch
from r1ray.workers.engines.packing import forward_response, pack_for_forward, pad_for_forward, padded_chunks


def shapes(rng: random.Random) -> dict[str, tuple[list[list[int]], list[int]]]:
    uniform = [[rng.randrange(3, 200) for _ in range(rng.randrange(100, 121))] for _ in range(74)]
    tail = [[rng.randrange(3, 200) for _ in range(32 + min(960, int(rng.expovariate(1 / 120)) + 1))]
            for _ in range(64)]
    return {"uniform": (uniform, [20] * len(uniform)), "long-tailed": (tail, [32] * len(tail))}


def timed(fn: Callable[[], None], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run(model, micro_batches: list, grad: bool) -> None:
    """Forward (and backward) every micro-batch, as the engine does."""
    for inputs in micro_batches:
        with torch.set_grad_enabled(grad):
            logp, _ = forward_response(model, inputs, torch.device("cpu"), 1.0, with_entropy=False)
            if grad:
                logp.sum().backward()


def layouts(seqs: list[list[int]], prompt_lens: list[int], budget: int) -> dict[str, tuple[list, int]]:
    """name -> (micro-batch inputs, tokens computed including padding)."""
    tokens, cu = pack(seqs)
    plens = torch.tensor(prompt_lens)
    width = max(len(s) - p for s, p in zip(seqs, prompt_lens))
    batch = TrainBatch(tokens=tokens, cu_seqlens=cu, prompt_lens=plens, response_mask=torch.zeros(len(seqs), width),
                       advantages=torch.zeros(len(seqs), width))
    whole = pad_for_forward(tokens, cu, plens, width)
    chunks = padded_chunks(prompt_lens, [len(s) - p for s, p in zip(seqs, prompt_lens)], budget)
    micro = [pad_for_forward(m.tokens, m.cu_seqlens, m.prompt_lens, width)
             for m in (select_rows(batch, rows) for rows in chunks)]
    return {"packed row": ([pack_for_forward(tokens, cu, plens, width)], int(cu[-1])),
            "padded (all rows)": ([whole], whole.input_ids.numel()),
            f"similar-length micro-batches ({len(micro)})": (micro, sum(m.input_ids.numel() for m in micro))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--budget", type=int, default=8192, help="actor.micro_batch_tokens")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(f"{tmp}/m", hidden=args.hidden, layers=args.layers, max_position_embeddings=1024)
        model, _ = load_model_and_tokenizer(path, attn_implementation=args.attn)
    for name, (seqs, prompt_lens) in shapes(random.Random(0)).items():
        real = sum(len(s) for s in seqs)
        print(f"{name}: {len(seqs)} sequences, {real} real tokens, attention {args.attn}, budget {args.budget}")
        results = {}
        for layout, (micro, computed) in layouts(seqs, prompt_lens, args.budget).items():
            train = timed(lambda micro=micro: run(model, micro, grad=True), args.repeats)
            infer = timed(lambda micro=micro: run(model, micro, grad=False), args.repeats)
            results[layout] = (train, infer)
            print(f"  {layout:<36} {computed:>7} tokens computed  fwd+bwd {train:6.2f} s  fwd {infer:6.2f} s")
        base_train, base_infer = next(iter(results.values()))
        for layout, (train, infer) in list(results.items())[1:]:
            print(f"  {layout:<36} vs packed row: fwd+bwd {base_train / train:.2f}x faster, "
                  f"fwd {base_infer / infer:.2f}x faster")


if __name__ == "__main__":
    main()
