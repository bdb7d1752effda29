"""One long sequence's forward + backward at sequence parallel S = 1 and S = 2: peak memory per rank and time.

    python bench/sequence_parallel.py [--lengths 8192 16384] [--hidden 256] [--layers 4] [--heads 8]

Each configuration runs in fresh processes (S of them, a gloo group on CPU), through the engine's own
functions: the micro-batch layout of `packing.py`, `forward_response` at S = 1 and
`ulysses.forward_response_sp` at S = 2, then a backward of the summed logprobs. A prompt of 256 tokens
and a response filling the rest of the length, as a long reasoning rollout is.

Memory is the peak resident set of each process during its first pass minus its resident set just before
it (a thread samples /proc/self/statm every 2 ms), so imports and the model are left out; later passes
reuse the heap the first one grew, which the resident set cannot tell from new use. Time is the wall time
of the passes after the first, best of --repeats. The S = 1 baseline runs in the same invocation;
the table prints S = 2 / S = 1 ratios.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

PROMPT = 256


class PeakRSS:
    """Peak resident set (bytes) of this process above its value at `start`, sampled by a thread."""

    def __init__(self, every_s: float = 0.002):
        self.every_s = every_s
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self) -> "PeakRSS":
        self.base = self.peak = self._rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.every_s)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def grown(self) -> int:
        return self.peak - self.base


def _rank(rank: int, size: int, port: int, model_dir: str, length: int, checkpointing: bool, repeats: int,
          out: dict) -> None:
    from transformers import AutoModelForCausalLM

    from r1ray.protocol import pack
    from r1ray.workers.engines import ulysses
    from r1ray.workers.engines.packing import forward_response, pad_for_forward

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // size))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    sp = ulysses.sequence_parallel_group(size)
    if sp is not None:
        ulysses.enable(model, size)
    generator = torch.Generator().manual_seed(0)
    seq = torch.randint(3, model.config.vocab_size, (length,), generator=generator).tolist()
    tokens, cu = pack([seq])
    inputs = pad_for_forward(tokens, cu, torch.tensor([PROMPT]), length - PROMPT)
    device = torch.device("cpu")

    def step() -> None:
        model.zero_grad(set_to_none=True)
        if sp is None:
            logp, _ = forward_response(model, inputs, device, 1.0, with_entropy=False)
        else:
            logp, _ = ulysses.forward_response_sp(model, inputs, device, 1.0, False, False, sp, "sdpa")
        logp.sum().backward()

    # Memory on the first pass: later passes reuse the heap the first one grew, which RSS cannot see.
    dist.barrier()
    with PeakRSS() as rss:
        step()
    best = float("inf")
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    out[rank] = (rss.grown, best)
    dist.destroy_process_group()


def measure(size: int, model_dir: str, length: int, checkpointing: bool, repeats: int) -> tuple[float, float]:
    """(largest per-rank peak in GiB, step seconds) of one configuration in fresh processes."""
    from r1ray.workers.base import free_port

    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_rank, args=(size, free_port(), model_dir, length, checkpointing, repeats, out),
                           nprocs=size, start_method="spawn")
        results = dict(out)
    return max(p for p, _ in results.values()) / 2**30, max(t for _, t in results.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from r1ray.models import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model(f"{tmp}/model", hidden=args.hidden, layers=args.layers, heads=args.heads,
                                         kv_heads=args.heads // 4 or 1,
                                         max_position_embeddings=max(args.lengths) + 1, intermediate=4 * args.hidden))
        print(f"model: hidden {args.hidden}, {args.layers} layers, {args.heads} heads; prompt {PROMPT} tokens; "
              f"{os.cpu_count()} CPUs")
        print("| tokens | checkpointing | S=1 peak GiB/rank | S=2 peak GiB/rank | ratio | S=1 s | S=2 s | ratio |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for length in args.lengths:
            for checkpointing in (False, True):
                one = measure(1, model_dir, length, checkpointing, args.repeats)
                two = measure(2, model_dir, length, checkpointing, args.repeats)
                print(f"| {length} | {'on' if checkpointing else 'off'} | {one[0]:.2f} | {two[0]:.2f} | "
                      f"{two[0] / one[0]:.2f} | {one[1]:.2f} | {two[1]:.2f} | {two[1] / one[1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
