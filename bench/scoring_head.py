"""Memory of the response logprobs' forward + backward: logits returned whole (the previous design) against
the scoring head (`packing.scoring_head`), one long response through a model with a real vocabulary.

    python bench/scoring_head.py [--vocab 151936] [--tokens 4096 8192] [--hidden 256] [--layers 2]

Each case runs in a fresh process: a random Qwen2 model in float32 (Qwen2.5's vocabulary by default), one
sequence of a 128-token prompt and a response of --tokens, logprobs and entropy of every response token,
backward of their sum (with entropy as a loss term: the heaviest case). Previous design: the model's
output layer returns the (K, V) logits, then `_previous_scores` scores them in checkpointed
float32 chunks, which keep those logits alive for the backward. Scoring head: the output layer itself
scores chunk by chunk, each chunk one checkpointed function from hidden states. Memory is the peak
resident set above the one before the pass (first pass; see bench/sequence_parallel.py), time the best of
--repeats later passes.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.multiprocessing as mp

from sequence_parallel import PeakRSS

PROMPT = 128


def _case(design: str, vocab: int, tokens: int, hidden: int, layers: int, repeats: int, out: dict) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1ray.protocol import pack
    from r1ray.workers.engines.packing import forward_response, pad_for_forward

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=PROMPT + tokens + 1)
    model = Qwen2ForCausalLM(config)
    seq = torch.randint(0, vocab, (PROMPT + tokens,)).tolist()
    flat, cu = pack([seq])
    inputs = pad_for_forward(flat, cu, torch.tensor([PROMPT]), tokens)
    device = torch.device("cpu")

    def step() -> None:
        model.zero_grad(set_to_none=True)
        if design == "scoring head":
            logp, ent = forward_response(model, inputs, device, 1.0, True, entropy_grad=True)
        else:
            logits = inputs.logits(model, device)                       # (K, V), kept for the backward
            logp, ent = _previous_scores(logits, inputs.targets)
        (logp.sum() + ent.sum()).backward()

    with PeakRSS() as rss:
        step()
    out[design] = (rss.grown / 2**30, min(_seconds(step) for _ in range(repeats)))


def _previous_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous design's scoring of (K, V) logits kept whole: float32 logprobs and entropy,
    LOGITS_CHUNK_TOKENS rows at a time, each chunk checkpointed (its float32 copies recomputed)."""
    from torch.utils.checkpoint import checkpoint

    from r1ray.memory_plan import LOGITS_CHUNK_TOKENS

    def chunk(rows: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(rows.float(), dim=-1)
        return torch.stack([logp.gather(-1, wanted[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)], -1)

    parts = [checkpoint(chunk, rows, wanted, use_reentrant=False)
             for rows, wanted in zip(logits.split(LOGITS_CHUNK_TOKENS), targets.split(LOGITS_CHUNK_TOKENS))]
    scores = torch.cat(parts)
    return scores[:, 0], scores[:, 1]


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(design: str, *args) -> tuple[float, float]:
    with mp.Manager() as manager:
        out = manager.dict()
        process = mp.get_context("spawn").Process(target=_case, args=(design, *args, out))
        process.start()
        process.join()
        return out[design]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(f"vocab {args.vocab}, hidden {args.hidden}, {args.layers} layers, float32, prompt {PROMPT} tokens")
    print("| response tokens | previous peak GiB | scoring head peak GiB | ratio | previous s | scoring head s | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for tokens in args.tokens:
        old = measure("logits", args.vocab, tokens, args.hidden, args.layers, args.repeats)
        new = measure("scoring head", args.vocab, tokens, args.hidden, args.layers, args.repeats)
        print(f"| {tokens} | {old[0]:.2f} | {new[0]:.2f} | {new[0] / old[0]:.2f} | {old[1]:.2f} | {new[1]:.2f} | "
              f"{new[1] / old[1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
