"""Ulysses sequence parallelism at S = 2 equals S = 1: the same forward, the same gradients.

Two ranks of a real gloo group (two Ray tasks) each run one micro-batch split by columns
(`forward_response_sp`) through a tiny Qwen2 model whose attention is the Ulysses wrapper, and the same
micro-batch whole (`forward_response`) through the plain model. Per-token logprobs and entropy must agree,
and the sum of the two ranks' parameter gradients of a loss over both must equal the whole pass's.

The micro-batches are the cases where splitting goes wrong: an odd number of columns (the last shard is
padded), a micro-batch shorter than S (one rank holds only padding), a response whose first token is the
first column of the second shard (its logit is the last column of the first: the label must come from
across the boundary, verl #6068), packed rows, KV heads fewer than ranks (repeated), and the eager kernel.

The arithmetic is not bit for bit: the projections and MLPs run on (b, N/2) instead of (b, N) and may
sum in another order. Measured: logprobs within 5e-7, entropy within 1.5e-6, each gradient tensor within
5e-7 of its norm (float32 rounding); allowed: 1e-5 on logprobs and entropy, 1e-4 relative (plus 1e-6) on the norm of each gradient tensor's difference.
"""

from __future__ import annotations

import sys
from functools import partial

import pytest
import ray
import torch

from r1ray.models import build_tiny_model
from r1ray.protocol import pack

pytestmark = pytest.mark.timeout(300)

LOGPROB_ATOL = 1e-5
GRAD_RTOL = 1e-4
# Where the whole pass's gradient is exactly 0 (one token attends to itself alone: the softmax is constant,
# so q and k get none), the split pass may leave float32 dust.
GRAD_ATOL = 1e-6

# case -> (layout, [(prompt tokens, response tokens)]); token ids below the tiny vocabulary.
CASES = {
    # 3 + 6 + 1 ... : rows of different lengths, 13 input columns (odd: the last shard gets a pad column)
    "padded_odd": ("padded", [([5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18]), ([20, 21], [22, 23, 24])]),
    # one prompt token and one response token: 1 input column, so rank 1 holds only padding
    "shorter_than_s": ("padded", [([5], [9])]),
    # prompt 6, response 7: 12 input columns, 6 per rank; the logit predicting response token 0 is column 5,
    # the last of rank 0, and its label (column 6) is rank 1's first token
    "response_at_boundary": ("padded", [([5, 6, 7, 8, 9, 10], [30, 31, 32, 33, 34, 35, 36])]),
    # sequences end to end in one row (padding_free=on), one of them across the shard boundary
    "packed": ("packed", [([5, 6, 7], [8, 9, 10, 11]), ([20, 21, 22, 23], [24, 25]), ([40], [41, 42, 43])]),
}
# (model, attention kernel): KV heads 2 (one per rank) and 1 (repeated for each rank's query heads)
MODELS = {"kv2": {"kv_heads": 2}, "kv1": {"kv_heads": 1}}
RUNS = [("kv2", "sdpa"), ("kv1", "sdpa"), ("kv2", "eager")]


def _layout(layout: str, seqs):
    from r1ray.workers.engines.packing import pack_for_forward, pad_for_forward

    tokens, cu = pack([p + r for p, r in seqs])
    prompt_lens = torch.tensor([len(p) for p, _ in seqs])
    width = max(len(r) for _, r in seqs)
    return (pad_for_forward if layout == "padded" else pack_for_forward)(tokens, cu, prompt_lens, width)


def _pass(model, fn, weights):
    """(logprobs, entropy, {name: grad}) of the loss sum(logp * w) + sum(entropy * w)."""
    model.zero_grad(set_to_none=True)
    logp, ent = fn()
    (logp * weights).sum().add((ent * weights).sum()).backward()
    return logp.detach(), ent.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _rolled_label_logp(model, inputs) -> float:
    """The first response token's logprob as a shift inside each shard would score it: the logit at the
    last column of rank 0's shard against the first token of that same shard (a local roll wraps)."""
    with torch.no_grad():
        logits = model(input_ids=inputs.input_ids, position_ids=inputs.position_ids, use_cache=False).logits
    last = inputs.prompt_width - 1
    scaled = logits[0, last].float() / 0.7
    return float(scaled[inputs.input_ids[0, 0]] - torch.logsumexp(scaled, -1))


def _rank(rank: int, port: int, paths: dict) -> dict:
    """One rank of the S = 2 group: every (model, kernel, case), compared with the whole pass."""
    import copy
    import os

    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from r1ray.workers.engines import ulysses
    from r1ray.workers.engines.packing import forward_response

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    sp = ulysses.sequence_parallel_group(2)
    device = torch.device("cpu")
    out = {}
    try:
        for model_name, kernel in RUNS:
            plain = AutoModelForCausalLM.from_pretrained(paths[model_name], dtype=torch.float32,
                                                         attn_implementation=kernel)
            split = copy.deepcopy(plain)
            ulysses.enable(split, 2)
            for case, (layout, seqs) in CASES.items():
                inputs = _layout(layout, seqs)
                weights = torch.linspace(-1.0, 1.0, inputs.response_lens.numel() * inputs.width).reshape(
                    len(inputs.response_lens), inputs.width)
                whole = _pass(plain, partial(forward_response, plain, inputs, device, 0.7, True, True), weights)
                parts = _pass(split, partial(ulysses.forward_response_sp, split, inputs, device, 0.7, True, True,
                                             sp, kernel), weights)
                summed = {}
                for name, grad in parts[2].items():
                    dist.all_reduce(grad, group=sp.group)
                    summed[name] = grad
                out[(model_name, kernel, case)] = {
                    "logp": (parts[0] - whole[0]).abs().max().item(),
                    "entropy": (parts[1] - whole[1]).abs().max().item(),
                    # per tensor: |difference| over what the tolerance allows (<= 1 passes)
                    "grad": max(((summed[n] - g).norm() / (GRAD_RTOL * g.norm() + GRAD_ATOL)).item()
                                for n, g in whole[2].items()),
                    "grad_names": sorted(summed) == sorted(whole[2]),
                    "whole_logp": whole[0], "split_logp": parts[0],
                }
                if case == "response_at_boundary":
                    out[(model_name, kernel, case)]["rolled_logp"] = _rolled_label_logp(plain, inputs)
        # The pass of a rank whose micro-batches ran out: it still joins every all-to-all, adds nothing.
        split.zero_grad(set_to_none=True)
        loss = ulysses.dummy_forward_sp(split, device, sp, kernel)
        loss.backward()
        out["dummy"] = (float(loss), max(float(p.grad.abs().max()) for p in split.parameters()))
    finally:
        dist.destroy_process_group()
    return out


# Ray workers cannot import this test module: ship it by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def compared(ray_cluster, tmp_path_factory):
    """{(model, kernel, case): differences and logprobs} from rank 0 (rank 1's are the same values)."""
    from r1ray.workers.base import free_port

    root = tmp_path_factory.mktemp("ulysses")
    paths = {name: str(build_tiny_model(root / name, hidden=32, layers=2, heads=4,
                                        max_position_embeddings=64, **extra))
             for name, extra in MODELS.items()}
    port = free_port()
    task = ray.remote(num_cpus=0.25)(_rank)
    results = ray.get([task.remote(rank, port, paths) for rank in (0, 1)], timeout=240)
    return results[0]


@pytest.mark.parametrize("run", [f"{m}-{k}" for m, k in RUNS])
@pytest.mark.parametrize("case", list(CASES))
def test_sequence_parallel_2_gives_the_logprobs_entropy_and_gradients_of_1(compared, run, case):
    model_name, kernel = run.split("-")
    got = compared[(model_name, kernel, case)]
    assert got["logp"] <= LOGPROB_ATOL, got
    assert got["entropy"] <= LOGPROB_ATOL, got
    assert got["grad_names"], "the split pass left some parameter without a gradient"
    assert got["grad"] <= 1.0, got


def test_a_rank_without_a_micro_batch_joins_the_group_with_a_zero_pass(compared):
    loss, largest_grad = compared["dummy"]
    assert loss == 0.0 and largest_grad == 0.0


def test_the_boundary_label_comes_from_the_next_shard(compared):
    """The case that catches a shift inside each shard: the first response token's logprob (logit in
    rank 0's last column, label in rank 1's first) equals the whole pass's, and a label taken from inside
    rank 0's shard (a local roll wraps to its first column) would score another token."""
    got = compared[("kv2", "sdpa", "response_at_boundary")]
    prompt, response = CASES["response_at_boundary"][1][0]
    assert len(prompt) == (len(prompt) + len(response) - 1) // 2      # the boundary is where the case says
    assert abs(got["split_logp"][0, 0] - got["whole_logp"][0, 0]) <= LOGPROB_ATOL
    assert abs(got["rolled_logp"] - float(got["whole_logp"][0, 0])) > 100 * LOGPROB_ATOL
