"""Weight-sync verification: the per-tensor device fingerprint against the previous design, in one process.

    python bench/bench_weight_fingerprint.py [--shape qwen2.5-0.5b] [--dtype bfloat16] [--device cpu] [--repeats 3]

The previous design hashed about 8 evenly spaced tensors with blake2b after copying them to host memory;
the current one fingerprints every tensor where it lives (`r1ray.workers.fingerprint`). The shapes are
those of a real checkpoint's parameters (random values; only sizes matter). Printed: time per sync for
each, GB covered, GB/s, and the ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import time

import torch

from r1ray.workers.fingerprint import Fingerprints

# (hidden, layers, heads, kv_heads, intermediate, vocab) of Qwen2.5 checkpoints (their config.json).
SHAPES = {"qwen2.5-0.5b": (896, 24, 14, 2, 4864, 151936), "qwen2.5-1.5b": (1536, 28, 12, 2, 8960, 151936)}


def parameter_shapes(hidden: int, layers: int, heads: int, kv_heads: int, inter: int, vocab: int) -> list[tuple]:
    kv = hidden // heads * kv_heads
    shapes = [(vocab, hidden)]
    for _ in range(layers):
        shapes += [(hidden, hidden), (hidden,), (kv, hidden), (kv,), (kv, hidden), (kv,), (hidden, hidden),
                   (inter, hidden), (inter, hidden), (hidden, inter), (hidden,), (hidden,)]
    return shapes + [(hidden,)]


def sampled_blake2b(tensors: list[torch.Tensor], samples: int = 8) -> str:
    """The previous verification: ~8 evenly spaced tensors, first and last, hashed on the host."""
    step = max(1, len(tensors) // samples)
    picked = set(range(0, len(tensors), step)) | {len(tensors) - 1}
    h = hashlib.blake2b(digest_size=16)
    for i in sorted(picked):
        data = tensors[i].detach().to("cpu").contiguous()
        raw = data.view(torch.int16) if data.dtype in (torch.bfloat16, torch.float16) else data
        h.update(raw.numpy().tobytes())
    return h.hexdigest()


def device_fingerprints(tensors: list[torch.Tensor]) -> list[list[int]]:
    prints = Fingerprints(len(tensors), tensors[0].device)
    for i, t in enumerate(tensors):
        prints.add(i, t)
    return prints.tolist()


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(SHAPES))
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    tensors = [torch.randn(s, dtype=dtype, device=args.device) for s in parameter_shapes(*SHAPES[args.shape])]
    total_gb = sum(t.numel() * t.element_size() for t in tensors) / 1e9
    step = max(1, len(tensors) // 8)
    sampled = set(range(0, len(tensors), step)) | {len(tensors) - 1}
    sampled_gb = sum(tensors[i].numel() * tensors[i].element_size() for i in sampled) / 1e9
    old = timed(lambda: sampled_blake2b(tensors), args.repeats)
    new = timed(lambda: device_fingerprints(tensors), args.repeats)
    print(f"{args.shape} {args.dtype} on {args.device}: {len(tensors)} tensors, {total_gb:.2f} GB")
    print(f"previous: blake2b of {len(sampled)} sampled tensors on the host: {old:.3f} s "
          f"({sampled_gb:.2f} GB covered, {sampled_gb / old:.2f} GB/s)")
    print(f"current:  device fingerprint of all {len(tensors)} tensors: {new:.3f} s "
          f"({total_gb:.2f} GB covered, {total_gb / new:.2f} GB/s)")
    print(f"ratio current/previous time: {new / old:.2f}x; coverage {total_gb / sampled_gb:.1f}x the bytes, "
          f"{len(tensors) / len(sampled):.0f}x the tensors")


if __name__ == "__main__":
    main()
