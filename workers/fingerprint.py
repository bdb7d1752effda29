"""Per-tensor fingerprints of synced weights, computed on the device where each tensor lives.

A fingerprint is two wrapping int64 sums over the tensor's raw bits (read as integers of the same width):
S1 = sum(x_i) and S2 = sum(x_i * (i + 1)). Integer sums are exact and order-independent, so the actor's
GPU and an engine's GPU (or CPU) agree bit for bit whenever the bits agree, and the position weight
makes S2 change when elements are swapped, shifted or truncated. Every tensor of every sync is
fingerprinted: one pass over memory on the device, chunked so that the int64 working copy stays small,
and one device-to-host copy of a (tensors, 2) table at the end.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

# Elements fingerprinted per chunk: the int64 copy and position weights of a chunk take 16 bytes each.
CHUNK_ELEMENTS = 1 << 24
_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class WeightSyncError(RuntimeError):
    """A sync phase failed or timed out, or the synced weights differ from the actor's."""


def fingerprint(tensor: Tensor) -> Tensor:
    """(2,) int64 on `tensor.device`: (sum of raw values, position-weighted sum), both wrapping mod 2^64."""
    flat = tensor.detach().contiguous().view(-1)
    raw = flat.view(_INT_OF_WIDTH[flat.element_size()])
    out = torch.zeros(2, dtype=torch.int64, device=flat.device)
    for start in range(0, raw.numel(), CHUNK_ELEMENTS):
        x = raw[start:start + CHUNK_ELEMENTS].to(torch.int64)
        pos = torch.arange(start + 1, start + 1 + x.numel(), dtype=torch.int64, device=flat.device)
        out[0] += x.sum()
        out[1] += (x * pos).sum()
    return out


class Fingerprints:
    """The fingerprint table of one sync: row i belongs to manifest entry i."""

    def __init__(self, count: int, device: torch.device):
        self.table = torch.zeros(count, 2, dtype=torch.int64, device=device)

    def add(self, index: int, tensor: Tensor) -> None:
        self.table[index] = fingerprint(tensor).to(self.table.device)

    def tolist(self) -> list[list[int]]:
        """Plain ints, so the table crosses Ray and vLLM's msgpack boundary unchanged."""
        return self.table.cpu().tolist()


def verify_fingerprints(names: Sequence[str], sent: list[list[int]], received: Sequence[list[list[int]]],
                        receivers: Sequence[str]) -> None:
    """Raise WeightSyncError naming each receiver (e.g. 'rollout engine 1') and the first tensors it holds
    differently from the actor."""
    problems = []
    for who, table in zip(receivers, received):
        if len(table) != len(sent):
            problems.append(f"{who} reported {len(table)} tensors, the actor sent {len(sent)}")
            continue
        bad = [names[i] for i, (a, b) in enumerate(zip(sent, table)) if list(a) != list(b)]
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            problems.append(f"{who} holds {len(bad)} tensor(s) that differ from the actor's: {shown}")
    if problems:
        raise WeightSyncError("weight sync verification failed: " + "; ".join(problems))
