"""Per-tensor fingerprints of synced weights, computed on the device where each tensor lives.

A tensor's raw bits (read as integers of the same width) are laid out as rows of ROW elements (the last,
partial row on its own), and the fingerprint is three wrapping int64 sums: S1 = sum of all values,
S2 = sum of row sums weighted by row number, S3 = sum of column sums weighted by column number (the
partial row weighted by absolute position). Integer sums are exact and order-independent, so the
actor's GPU and an engine's GPU (or CPU) agree bit for bit whenever the bits agree; a changed value
changes S1, and two swapped values change S2 (different rows) or S3 (same row). Each tensor is read
twice without an int64 copy, and the (tensors, 3) table crosses to the host once per sync.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

ROW = 4096
_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class WeightSyncError(RuntimeError):
    """A sync phase failed or timed out, or the synced weights differ from the actor's."""


def fingerprint(tensor: Tensor) -> Tensor:
    """(3,) int64 on `tensor.device`: (S1, S2, S3) as above, each wrapping mod 2^64."""
    raw = tensor.detach().contiguous().view(-1)
    raw = raw.view(_INT_OF_WIDTH[raw.element_size()])
    full = raw.numel() // ROW * ROW
    grid, tail = raw[:full].view(-1, ROW), raw[full:]
    i64 = dict(dtype=torch.int64, device=raw.device)
    rows = grid.sum(dim=1, dtype=torch.int64)                                  # (R,)
    cols = grid.sum(dim=0, dtype=torch.int64)                                  # (ROW,)
    tail_pos = torch.arange(full + 1, raw.numel() + 1, **i64)
    s1 = rows.sum() + tail.sum(dtype=torch.int64)
    s2 = (rows * torch.arange(1, rows.numel() + 1, **i64)).sum() + (tail.to(torch.int64) * tail_pos).sum()
    s3 = (cols * torch.arange(1, ROW + 1, **i64)).sum()
    return torch.stack([s1, s2, s3])


class Fingerprints:
    """The fingerprint table of one sync: row i belongs to manifest entry i."""

    def __init__(self, count: int, device: torch.device):
        self.table = torch.zeros(count, 3, dtype=torch.int64, device=device)

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
