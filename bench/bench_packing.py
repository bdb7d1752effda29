"""Packed vs padded logprob forward: time per batch, and the ratio, measured in one process.

    python bench/bench_packing.py [--hidden 256] [--layers 4] [--batch 32] [--repeats 3]

Responses of RL batches vary wildly in length (a few tokens to the whole budget). Padding every sequence to
the longest wastes compute on pad tokens; packing lays sequences end to end (restarting position ids) and
computes logits only at response positions. The baseline is the padded forward of the same batch.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch

from r1ray.models import build_tiny_model, load_model_and_tokenizer
from r1ray.protocol import pack
from r1ray.workers.engines.packing import forward_response, pack_for_forward


def padded_logprobs(model, seqs: list[list[int]], prompt_len: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, prompt_len - 1:-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, prompt_len:, None]).squeeze(-1)


def timed(fn, repeats: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model(f"{tmp}/m", hidden=args.hidden, layers=args.layers, max_position_embeddings=1024)
        model, _ = load_model_and_tokenizer(path)
    prompt_len = 32
    # Long-tailed response lengths, as in RL rollouts: most short, a few near the budget.
    seqs = [[rng.randrange(3, 200) for _ in range(prompt_len + min(960, int(rng.expovariate(1 / 120)) + 1))]
            for _ in range(args.batch)]
    tokens, cu = pack(seqs)
    prompt_lens = torch.full((len(seqs),), prompt_len)
    packed = pack_for_forward(tokens, cu, prompt_lens, max(len(s) for s in seqs) - prompt_len)
    with torch.no_grad():
        t_padded = timed(lambda: padded_logprobs(model, seqs, prompt_len), args.repeats)
        t_packed = timed(lambda: forward_response(model, packed, torch.device("cpu"), 1.0, False), args.repeats)
    real = int(cu[-1])
    padded = len(seqs) * max(len(s) for s in seqs)
    print(f"batch {len(seqs)} sequences, {real} real tokens, {padded} after padding ({padded / real:.2f}x)")
    print(f"padded forward: {t_padded * 1000:.0f} ms   packed forward: {t_packed * 1000:.0f} ms   "
          f"speed-up {t_padded / t_packed:.2f}x")


if __name__ == "__main__":
    main()
