"""Per-tensor fingerprints: exact, order-independent integer sums over raw bits, so any change of a value
or of its position changes them, while equal tensors agree on any device and in any chunking."""

from __future__ import annotations

import pytest
import torch

from r1ray.workers import fingerprint as fp
from r1ray.workers.fingerprint import Fingerprints, WeightSyncError, fingerprint, verify_fingerprints


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_equal_tensors_agree_and_any_single_change_is_seen(dtype):
    torch.manual_seed(0)
    t = torch.randn(33, 17).to(dtype)
    base = fingerprint(t)
    assert torch.equal(base, fingerprint(t.clone())) and base.dtype == torch.int64
    changed = t.clone()
    bits = changed.view(torch.int16 if dtype != torch.float32 else torch.int32)
    bits[5, 3] ^= 1                                                        # the lowest mantissa bit
    assert not torch.equal(fingerprint(changed), base)
    swapped = t.clone().view(-1)
    swapped[[0, 1]] = swapped[[1, 0]]
    assert t.view(-1)[0] != t.view(-1)[1] and not torch.equal(fingerprint(swapped), base)
    assert not torch.equal(fingerprint(t.view(-1)[:-1]), base)            # truncated
    assert not torch.equal(fingerprint(t.t().contiguous()), base)         # same values, other layout


def test_swaps_within_a_row_across_rows_and_in_the_partial_row_are_seen(monkeypatch):
    monkeypatch.setattr(fp, "ROW", 8)
    t = torch.arange(1, 30, dtype=torch.float32)         # 3 full rows of 8 and a partial row of 5
    base = fingerprint(t)
    for a, b in [(0, 1), (2, 10), (5, 26), (25, 28)]:    # same row, other rows, full vs partial, partial
        swapped = t.clone()
        swapped[[a, b]] = swapped[[b, a]]
        assert not torch.equal(fingerprint(swapped), base), (a, b)
    assert torch.equal(fingerprint(t.clone()), base)


def test_a_non_contiguous_view_fingerprints_like_its_contiguous_copy():
    t = torch.randn(8, 6)
    assert torch.equal(fingerprint(t[:, ::2]), fingerprint(t[:, ::2].contiguous()))


def test_table_is_plain_ints_and_verification_names_engine_and_tensors():
    names = [f"w{i}" for i in range(5)]
    tensors = [torch.randn(4) for _ in names]
    prints = Fingerprints(len(names), torch.device("cpu"))
    for i, t in enumerate(tensors):
        prints.add(i, t)
    table = prints.tolist()
    assert all(type(v) is int for row in table for v in row)
    verify_fingerprints(names, table, [table, table], ["engine 0", "engine 1"])
    bad = [list(r) for r in table]
    for i in (0, 1, 2, 4):
        bad[i][0] += 1
    with pytest.raises(WeightSyncError, match=r"engine 1 holds 4 tensor\(s\) that differ from the actor's: "
                                              r"w0, w1, w2 and 1 more"):
        verify_fingerprints(names, table, [table, bad], ["engine 0", "engine 1"])
