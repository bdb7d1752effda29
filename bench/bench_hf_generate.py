"""The Hugging Face rollout engine's decode loop against the `model.generate` design it replaced, on CPU.

    python bench/bench_hf_generate.py [--repeats 2] [--batch-sizes 64 256]

The old design (kept below as `generate_repeated`) repeats each prompt n times, left-pads, and calls
`model.generate(output_logits=True)` per chunk of `generate_batch_size` rows: every prompt is prefilled n
times, finished rows are computed until the longest row ends, and (b, L, V) logits are stacked. The new one
(`HFRolloutEngine.generate`) prefills each distinct prompt once and drops rows as they end. Both run on the
quickstart's tiny model (hidden 128, 2 layers), sampling at T=1, at three shapes:

- quickstart: 8 prompts x n=8, 24 new tokens;
- wide: 4 prompts x n=64, 128 new tokens (the model's own eos ends some rows: lengths 1..128, mean ~80);
- uneven: the wide shape with extra stop tokens, chosen so that about half the rows end within 16 tokens
  and the rest run much longer (both designs stop on the same ids).

Printed per shape: seconds per call (best of --repeats, after a warm-up), generated tokens per second, and
the new/old speed ratio; then the new loop at each of --batch-sizes on the wide and uneven shapes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter

import torch
from torch import Tensor

from r1ray.models import build_tiny_model
from r1ray.protocol import PromptBatch, SamplingParams, assemble_rollout, derive_seed
from r1ray.workers.engines import RolloutSpec
from r1ray.workers.engines.hf_rollout import HFRolloutEngine

SHAPES = [("quickstart", 8, 8, 24), ("wide", 4, 64, 128), ("uneven", 4, 64, 128)]   # (name, prompts, n, tokens)
UNEVEN_STOP_RATE = 0.02            # share of sampled tokens made stop tokens: ends about half the rows
                                   # within 16 tokens (measured; early tokens hit them more often)


def prompts(count: int) -> PromptBatch:
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(3, 250, (20,), generator=g).tolist() for _ in range(count)]
    return PromptBatch(prompt_ids=ids, ground_truths=["0"] * count, data_sources=["arithmetic"] * count,
                       extra_infos=[{} for _ in range(count)], indices=list(range(count)))


def generate_repeated(engine: HFRolloutEngine, batch: PromptBatch, sampling: SamplingParams):
    """The engine's previous `generate`: prompts repeated n times, `model.generate` per chunk of rows."""
    rows = [i for i in range(len(batch)) for _ in range(sampling.n)]
    responses, logprobs, truncated = [], [], []
    size = engine.spec.generate_batch_size
    for start in range(0, len(rows), size):
        torch.manual_seed(derive_seed(sampling.seed, start))
        r, lp, tr = _generate_chunk(engine, [batch.prompt_ids[i] for i in rows[start:start + size]], sampling)
        responses, logprobs, truncated = responses + r, logprobs + lp, truncated + tr
    texts = engine.tokenizer.batch_decode(responses, skip_special_tokens=True)
    return assemble_rollout(batch, sampling.n, responses, logprobs, truncated, texts)


def _generate_chunk(engine: HFRolloutEngine, chunk: list[list[int]],
                    sampling: SamplingParams) -> tuple[list[list[int]], list[Tensor], list[bool]]:
    pad = engine.tokenizer.pad_token_id
    width = max(len(p) for p in chunk)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
    greedy = sampling.temperature <= 0
    out = engine.model.generate(
        input_ids=input_ids, attention_mask=attention, max_new_tokens=sampling.max_new_tokens,
        do_sample=not greedy, temperature=None if greedy else sampling.temperature,
        top_p=None if greedy else sampling.top_p, top_k=sampling.top_k if sampling.top_k > 0 else None,
        eos_token_id=engine.eos_ids, pad_token_id=pad, output_logits=True, return_dict_in_generate=True)
    generated = out.sequences[:, width:].cpu()                        # (b, L)
    logits = torch.stack(out.logits, dim=1).float().cpu()              # (b, L, V)
    scaled = logits / (sampling.temperature if not greedy else 1.0)
    token_lp = scaled.gather(-1, generated[..., None]).squeeze(-1) - torch.logsumexp(scaled, dim=-1)
    responses, logprobs, truncated = [], [], []
    eos = torch.tensor(engine.eos_ids)
    for row, lp in zip(generated, token_lp):
        hits = torch.isin(row, eos).nonzero()
        end = int(hits[0]) + 1 if len(hits) else len(row)
        responses.append(row[:end].tolist())
        logprobs.append(lp[:end])
        truncated.append(not len(hits))
    return responses, logprobs, truncated


def best_times(generators: dict, batch: PromptBatch, sampling: SamplingParams,
               repeats: int) -> dict[str, tuple[float, int, Tensor]]:
    """Best seconds, tokens and response lengths per generate function. The functions take turns within
    each repeat, so a burst of load from other processes slows both rather than one."""
    for generate in generators.values():
        generate(batch, sampling)                                         # warm-up
    results = {kind: (float("inf"), 0, None) for kind in generators}
    for r in range(repeats):
        seeded = SamplingParams(**{**sampling.__dict__, "seed": r + 1})
        for kind, generate in generators.items():
            t0 = time.perf_counter()
            out = generate(batch, seeded)
            seconds = time.perf_counter() - t0
            results[kind] = (min(results[kind][0], seconds), int(out.response_lens.sum()), out.response_lens)
    return results


def uneven_stop_ids(engine: HFRolloutEngine, batch: PromptBatch, sampling: SamplingParams) -> list[int]:
    """The most frequent sampled tokens whose frequencies add up to about UNEVEN_STOP_RATE."""
    counts = Counter(t for row in engine.generate(batch, sampling).response_ids().tolist() for t in row)
    total, chosen, mass = sum(counts.values()), [], 0.0
    for token, count in sorted(counts.items(), key=lambda kv: kv[1]):      # rarest first: fine-grained sum
        if mass + count / total > UNEVEN_STOP_RATE:
            break
        chosen.append(token)
        mass += count / total
    return chosen


def _with_batch_size(engine: HFRolloutEngine, spec: RolloutSpec, size: int):
    def generate(batch: PromptBatch, sampling: SamplingParams):
        engine.spec = RolloutSpec(**{**spec.__dict__, "generate_batch_size": size})
        try:
            return engine.generate(batch, sampling)
        finally:
            engine.spec = spec
    return generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[64, 256])
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(f"{tmp}/m", hidden=128, layers=2, heads=4, kv_heads=2, max_position_embeddings=256)
        spec = RolloutSpec(engine="hf", model_path=str(model), dtype="float32", max_model_len=256, seed=0,
                           generate_batch_size=64)
        engine = HFRolloutEngine(spec, torch.device("cpu"))
        default_eos = list(engine.eos_ids)
        for name, count, n, new in SHAPES:
            sampling = SamplingParams(n=n, temperature=1.0, max_new_tokens=new, seed=0)
            batch = prompts(count)
            engine.eos_ids = default_eos
            if name == "uneven":
                engine.eos_ids = default_eos + uneven_stop_ids(engine, batch, sampling)
            results = best_times({"old": lambda b, s: generate_repeated(engine, b, s), "new": engine.generate},
                                 batch, sampling, args.repeats)
            for kind, (seconds, tokens, lens) in results.items():
                early = float((lens <= 16).float().mean())
                print(f"{name:<10} {count} prompts x n={n}, {new} new tokens, {kind}: {seconds:.2f} s, "
                      f"{tokens} tokens, {tokens / seconds:,.0f} tokens/s (lengths {int(lens.min())}.."
                      f"{int(lens.max())}, {early:.0%} <= 16)")
            (o_s, o_t, _), (n_s, n_t, _) = results["old"], results["new"]
            print(f"{name:<10} new/old throughput ratio: {(n_t / n_s) / (o_t / o_s):.2f}x")
            if name in ("wide", "uneven"):
                sized = {size: _with_batch_size(engine, spec, size) for size in args.batch_sizes}
                for size, (seconds, tokens, _) in best_times(sized, batch, sampling, args.repeats).items():
                    print(f"{name:<10} new loop, generate_batch_size={size}: {seconds:.2f} s, "
                          f"{tokens / seconds:,.0f} tokens/s")


if __name__ == "__main__":
    main()
